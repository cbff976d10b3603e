"""sandbox/sql.py: the gateway's charge in one statement answers as the ORM path beside it does."""

from __future__ import annotations

import re
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from orders.providers import PermanentProviderError, ProviderResult, TransientProviderError
from sandbox import sql
from sandbox.models import SandboxFault, SandboxLedgerEntry
from sandbox.providers import SandboxGateway

pytestmark = pytest.mark.django_db

REFERENCE = "order:7"
AMOUNT = Decimal("19.80")


@pytest.fixture(params=["one statement", "orm"])
def path(request, monkeypatch) -> str:
    """Each test runs on the statement and on the ORM path (SQLite's) beside it."""
    if request.param == "orm":
        monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    return request.param


def charge(key: str = "key-1", amount: Decimal = AMOUNT) -> ProviderResult:
    return SandboxGateway().charge(amount=amount, idempotency_key=key, reference=REFERENCE)


def script(fault: str, times: int = 1) -> SandboxFault:
    return SandboxFault.objects.create(reference=REFERENCE, operation="charge", fault=fault, remaining=times)


def entries() -> list[tuple[str, str, Decimal]]:
    return list(SandboxLedgerEntry.objects.values_list("kind", "idempotency_key", "amount"))


def test_the_statement_is_planned_by_postgresql_and_inserts_every_column() -> None:
    params = {"idempotency_key": "k", "reference": "r", "amount": AMOUNT, "now": timezone.now(), "random_fault": None}
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql.CHARGE}", params)
        assert cursor.fetchall()
    match = re.search(r"INSERT INTO sandbox_sandboxledgerentry \(([^)]*)\)", sql.CHARGE)
    assert match
    inserted = {column.strip() for column in match.group(1).split(",")}
    assert inserted == {f.column for f in SandboxLedgerEntry._meta.concrete_fields if not f.primary_key}


def test_a_new_key_is_charged_once_and_a_repeat_gets_the_first_charge_without_taking_a_fault(path: str) -> None:
    first = charge()
    [entry] = SandboxLedgerEntry.objects.all()
    assert first == ProviderResult(reference=f"sbx_charge_{entry.pk}")
    assert (entry.kind, entry.reference, entry.amount) == ("charge", REFERENCE, AMOUNT)
    scripted = script(SandboxFault.Fault.DECLINE)

    assert charge() == first

    scripted.refresh_from_db()
    assert scripted.remaining == 1
    assert len(entries()) == 1


def test_a_key_used_for_another_amount_is_refused_and_nothing_is_recorded(path: str) -> None:
    charge()
    with pytest.raises(PermanentProviderError, match="idempotency key key-1 was used for a different request"):
        charge(amount=Decimal("1.00"))
    assert entries() == [("charge", "key-1", AMOUNT)]


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (SandboxFault.Fault.DECLINE, PermanentProviderError, "declined: card declined by the issuer"),
        (SandboxFault.Fault.TRANSIENT, TransientProviderError, "timed out"),
        (SandboxFault.Fault.HANG, TransientProviderError, "no answer within 0.2s"),
    ],
)
def test_a_scripted_failure_is_taken_once_in_id_order_and_records_nothing(
    path: str, settings, fault: str, error: type, message: str
) -> None:
    settings.PROVIDER_TIMEOUT = timezone.timedelta(seconds=0.2)
    first, second = script(fault), script(SandboxFault.Fault.DECLINE)

    with pytest.raises(error, match=message):
        charge()

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.remaining, second.remaining) == (0, 1)
    assert entries() == []
    with pytest.raises(PermanentProviderError, match="declined"):
        charge()
    assert charge().reference.startswith("sbx_charge_")  # both faults spent
    assert len(entries()) == 1


def test_a_random_failure_is_drawn_only_when_none_is_scripted(path: str, settings) -> None:
    settings.PAYMENT_SANDBOX_DECLINE_RATE = 1.0
    with pytest.raises(PermanentProviderError, match="declined"):
        charge()
    assert entries() == []
    script(SandboxFault.Fault.TRANSIENT)
    with pytest.raises(TransientProviderError, match="gateway timeout"):
        charge()
    assert entries() == []


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_request_that_records_the_key_first_is_answered_with_its_entry(path: str) -> None:
    inserted, finished = threading.Event(), []

    def other_request() -> None:
        try:
            with transaction.atomic():
                entry = SandboxLedgerEntry.objects.create(
                    kind="charge", idempotency_key="key-1", reference=REFERENCE, amount=AMOUNT
                )
                inserted.set()
                time.sleep(0.5)  # the charge below arrives meanwhile and waits for this commit
            finished.append(entry.provider_reference)
        finally:
            connection.close()

    other = threading.Thread(target=other_request)
    other.start()
    assert inserted.wait(10)
    result = charge()
    other.join(10)

    assert [result.reference] == finished
    assert len(entries()) == 1
