"""notifications/sql.py: the statements parse against the real schema and do what the ORM path beside them does."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from core.base_task import Attempt
from notifications import sql
from notifications.models import Campaign, Notification
from notifications.services import campaigns, outbox
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_the_bulk_statement_is_planned_by_postgresql_against_the_real_tables() -> None:
    parameters = {
        "ids": [1, 2],
        "statuses": ["sent", "failed"],
        "sent_at": [timezone.now(), None],
        "errors": ["", "550 no such user"],
        "now": timezone.now(),
        "task_id": "t",
    }
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql.RECORD_BULK_EMAILS}", parameters)
        assert cursor.fetchall()


def test_the_columns_it_sets_are_the_models_own() -> None:
    set_clauses = re.findall(r"\bSET (.*?)\bFROM\b", sql.RECORD_BULK_EMAILS, re.DOTALL)
    assignments = {name for clause in set_clauses for name in re.findall(r"(\w+) = ", clause)}
    columns = {f.column for model in (Notification, Campaign) for f in model._meta.concrete_fields}
    assert len(set_clauses) == 2
    assert assignments <= columns
    assert {"status", "sent_at", "last_error", "sent", "failed"} <= assignments


def _chunk_outcome(settings, monkeypatch, one_statement: bool) -> tuple:
    settings.EMAIL_RATE_LIMIT = None
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    monkeypatch.setattr(sql, "in_one_statement", lambda: one_statement)
    spring = Campaign.objects.create(name=f"Spring {one_statement}", subject="Hi", body="Hello")
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id=f"launch-{one_statement}")
    rows = Notification.objects.filter(campaign=spring).order_by("pk")
    campaigns.send_campaign_chunk(spring.pk, rows[0].pk, rows.last().pk, attempt=Attempt(f"chunk-{one_statement}"))
    spring.refresh_from_db()
    recorded = [(r.status, bool(r.sent_at), r.lease_owner, r.lease_expires_at, bool(r.last_error)) for r in rows]
    return (spring.status, spring.sent, spring.failed), recorded


def test_recording_in_one_statement_leaves_what_the_orm_path_leaves(settings, monkeypatch, broker) -> None:
    for _ in range(4):
        UserFactory()
    one_statement, orm = _chunk_outcome(settings, monkeypatch, True), _chunk_outcome(settings, monkeypatch, False)
    assert one_statement == orm
    assert one_statement[0] == ("done", 4, 0)


def test_the_claim_is_planned_by_postgresql_and_sets_only_the_models_columns() -> None:
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql.CLAIM_TO_SEND}", {"id": 1, "task_id": "t", "now": now, "lease_expires_at": now})
        assert cursor.fetchall()
    [clause] = re.findall(r"\bSET (.*?)\bWHERE\b", sql.CLAIM_TO_SEND, re.DOTALL)
    assignments = set(re.findall(r"(\w+) = ", clause))
    assert assignments == {"status", "lease_owner", "lease_expires_at", "attempts", "task_id", "updated_at"}
    assert assignments <= {f.column for f in Notification._meta.concrete_fields}


def _rows_in_every_state(prefix: str) -> dict[str, Notification]:
    """One row per case the claim must tell apart, keyed by the case."""
    now = timezone.now()
    live, dead = now + timedelta(minutes=5), now - timedelta(minutes=5)
    cases = {
        "queued": {},
        "queued, own retry": {"lease_owner": "me", "lease_expires_at": live},
        "queued, another's retry": {"lease_owner": "other", "lease_expires_at": live},
        "queued, lapsed hold": {"lease_owner": "other", "lease_expires_at": dead},
        "sending, live": {"status": "sending", "lease_owner": "other", "lease_expires_at": live},
        "sending, abandoned": {"status": "sending", "lease_owner": "other", "lease_expires_at": dead},
        "sent": {"status": "sent"},
        "cancelled": {"status": "cancelled"},
        "expired before sending": {"expires_at": dead},
        "expiring later": {"expires_at": live},
    }
    return {
        case: Notification.objects.create(
            kind="test", recipient="a@example.com", subject=case, body_text="b", dedup_key=f"{prefix}{case}", **fields
        )
        for case, fields in cases.items()
    }


def test_claiming_in_one_statement_takes_exactly_the_rows_the_orm_claim_takes(django_assert_num_queries) -> None:
    by_statement, by_orm = _rows_in_every_state("s-"), _rows_in_every_state("o-")
    claimed_in_one = {}
    for case, row in by_statement.items():
        with django_assert_num_queries(1):
            claimed_in_one[case] = outbox._claim_in_one_statement(row.pk, "me")
    claimed_by_orm = {
        case: not outbox.expire_if_late(row) and bool(outbox.claim(Notification.objects.filter(pk=row.pk), "me"))
        for case, row in by_orm.items()
    }

    assert {case for case, row in claimed_in_one.items() if row} == {
        case for case, took in claimed_by_orm.items() if took
    }
    assert set(claimed_by_orm.values()) == {True, False}
    varying = {"id", "dedup_key", "created_at", "updated_at", "lease_expires_at", "expires_at"}
    for case, row in claimed_in_one.items():
        if row is None:
            continue
        stored = Notification.objects.get(pk=row.pk)
        # What the statement returns is the row as it now is, JSON decoded, as the ORM reads it.
        assert {f.attname: getattr(row, f.attname) for f in Notification._meta.concrete_fields} == {
            f.attname: getattr(stored, f.attname) for f in Notification._meta.concrete_fields
        }
        assert row.headers == {} and (row.status, row.lease_owner, row.task_id) == ("sending", "me", "me")
        orm = Notification.objects.get(pk=by_orm[case].pk)
        assert {k: v for k, v in stored.__dict__.items() if k not in varying | {"_state"}} == {
            k: v for k, v in orm.__dict__.items() if k not in varying | {"_state"}
        }
