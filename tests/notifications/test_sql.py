"""notifications/sql.py: the statement parses against the real schema and records what the ORM path records."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.utils import timezone

from core.base_task import Attempt
from notifications import sql
from notifications.models import Campaign, Notification
from notifications.services import campaigns
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_the_statement_is_planned_by_postgresql_against_the_real_tables() -> None:
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
