"""The charge step and its money, called as the pipeline calls them (orders.services.payments), against real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from core.base_task import Attempt
from orders.models import Order, Payment
from orders.providers import payment_gateway
from orders.services import lease, payments, pipeline
from sandbox.providers import SandboxGateway
from tests.orders.helpers import fault, ledger, place, product, stock_of

# Service tests: bin/test runs them on PostgreSQL and again on SQLite, the embedded default.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded_db]


@pytest.fixture(autouse=True)
def _no_latency(settings) -> None:
    settings.PAYMENT_SANDBOX_LATENCY_MS = 0


def test_the_charge_intent_is_made_only_while_the_lease_holds_and_a_retry_reuses_it(customer) -> None:
    order = place(customer, (product(), 1))
    claimed, _ = lease.claim(order.pk, "task-1")

    intent = payments.open_charge(claimed, "task-1", "key-1")
    assert Payment.objects.get().pk == intent.pk and intent.status == "pending"
    assert payments.open_charge(claimed, "task-1", "key-1").pk == intent.pk  # a retry reuses it

    Order.objects.filter(pk=order.pk).update(lease_owner="task-2")
    with pytest.raises(lease.Stopped):
        payments.open_charge(claimed, "task-1", "key-2")
    Order.objects.filter(pk=order.pk).update(lease_owner="task-1", status="cancelled")
    with pytest.raises(lease.Stopped) as stopped:
        payments.open_charge(claimed, "task-1", "key-2")
    assert stopped.value.outcome == "cancelled"
    assert Payment.objects.count() == 1


def test_a_successful_charge_is_recorded_on_the_payment_and_checkpointed(customer) -> None:
    order = place(customer, (product(), 1))
    claimed, lines = lease.claim(order.pk, "task-1")
    pipeline.reserve_stock(claimed, lines, "task-1")
    intent = payments.open_charge(claimed, "task-1", "key-1")

    payments.record_charge(claimed, intent, "task-1", "ref-1")

    payment, saved = Payment.objects.get(), Order.objects.get(pk=order.pk)
    assert (payment.status, payment.provider_reference, payment.attempts) == ("succeeded", "ref-1", 1)
    assert (intent.status, intent.provider_reference, intent.attempts) == ("succeeded", "ref-1", 1)
    assert saved.step == claimed.step == "charged"


def test_a_charge_made_by_a_task_that_lost_its_lease_is_kept_and_not_made_again_by_the_new_holder(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    claimed, lines = lease.claim(order.pk, "task-1")
    pipeline.reserve_stock(claimed, lines, "task-1")
    intent = payments.open_charge(claimed, "task-1", payments.charge_key(claimed))
    Order.objects.filter(pk=order.pk).update(lease_owner="task-2")

    with pytest.raises(lease.Stopped):
        payments.record_charge(claimed, intent, "task-1", "ref-1")

    assert Payment.objects.get().status == "succeeded"  # what the gateway did is on record
    assert Order.objects.get(pk=order.pk).step == "reserved"
    Order.objects.filter(pk=order.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert pipeline.process_order(order.pk, attempt=Attempt("task-3")) == pipeline.Outcome.COMPLETED
    assert ledger(order) == []  # the new holder found the charge recorded and did not call the gateway
    assert Payment.objects.get().provider_reference == "ref-1"


def test_the_sandbox_answers_a_repeated_key_with_the_first_charge_before_drawing_a_failure(customer) -> None:
    order = place(customer, (product(), 1))
    gateway = SandboxGateway()
    first = gateway.charge(amount=order.total, idempotency_key="order-key", reference=f"order:{order.pk}")
    fault(order, "charge", "decline")

    again = gateway.charge(amount=order.total, idempotency_key="order-key", reference=f"order:{order.pk}")

    assert again == first
    assert len(ledger(order)) == 1
    assert gateway.find_charge(idempotency_key="order-key") == first
    assert gateway.find_charge(idempotency_key="never-used") is None


@pytest.fixture
def forgetful_gateway(settings) -> Iterator[None]:
    settings.PAYMENT_GATEWAY = "tests.support.gateways.ForgetfulGateway"
    payment_gateway.cache_clear()
    yield
    payment_gateway.cache_clear()


def _charged_then_lost(order: Order) -> None:
    """The state a crash right after the gateway charged leaves: the charge in the gateway's books only."""
    claimed, lines = lease.claim(order.pk, "task-1")
    pipeline.reserve_stock(claimed, lines, "task-1")
    key = payments.charge_key(claimed)
    payments.open_charge(claimed, "task-1", key)
    SandboxGateway().charge(amount=order.total, idempotency_key=key, reference=f"order:{order.pk}")


def test_a_retry_declined_by_a_gateway_that_forgot_the_first_charge_finds_it_and_completes(
    customer, forgetful_gateway
) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    _charged_then_lost(order)
    fault(order, "charge", "decline")

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.COMPLETED

    assert Payment.objects.get(order=order).status == "succeeded"
    assert len(ledger(order)) == 1 and ledger(order, "refund") == []
    assert stock_of(mug) == 4


def test_an_order_that_gives_up_with_its_charge_pending_asks_the_gateway_and_refunds_a_charge_that_went_through(
    customer, forgetful_gateway
) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    _charged_then_lost(order)
    fault(order, "charge", "transient", times=5)

    outcome = pipeline.process_order(order.pk, attempt=Attempt("task-1", is_last=True))

    assert outcome == pipeline.Outcome.FAILED
    charge = Payment.objects.get(order=order, kind="charge")
    assert charge.status == "succeeded" and charge.provider_reference == ledger(order)[0].provider_reference
    assert len(ledger(order, "refund")) == 1
    assert stock_of(mug) == 5


def test_an_order_that_gives_up_with_a_pending_charge_the_gateway_never_made_refunds_nothing(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    fault(order, "charge", "transient", times=5)

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1", is_last=True)) == pipeline.Outcome.FAILED

    assert Payment.objects.get(order=order).status == "failed"
    assert ledger(order) == ledger(order, "refund") == []
    assert stock_of(mug) == 5
