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
        "status": "sent",
        "sent_at": timezone.now(),
        "error": "",
        "now": timezone.now(),
        "notification_id": 1,
        "task_id": "t",
        "sent": 1,
        "failed": 0,
    }
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql.RECORD_BULK_EMAIL}", parameters)
        assert cursor.fetchall()


def test_the_columns_it_sets_are_the_models_own() -> None:
    assignments = re.findall(r"(\w+) = ", sql.RECORD_BULK_EMAIL.split("WHERE")[0])
    columns = {f.column for model in (Notification, Campaign) for f in model._meta.concrete_fields}
    assert set(assignments) <= columns


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
