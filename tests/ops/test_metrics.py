"""The web /metrics: every name it always had, the new gauges the alerts need, and no scan of a whole table."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import TaskResult
from prometheus_client.parser import text_string_to_metric_families

from notifications.models import Notification
from ops import result_counts
from ops.models import RecentAnswer, TaskResultTally
from orders.models import Order
from tests.orders.helpers import place, product
from tests.support.metrics import scrape

pytestmark = pytest.mark.django_db

# Every name /metrics had before issue 17 (README "Health, metrics and logs"); dashboards and alerts use them.
EXISTING_NAMES = {
    "backoffice_up",
    "backoffice_queue_depth",
    "backoffice_workers_online",
    "backoffice_beat_heartbeat_age_seconds",
    "backoffice_task_results",
    "backoffice_task_failures_24h",
    "backoffice_order_retries_24h",
    "backoffice_orders_unfinished",
    "backoffice_emails_unsent",
}
# Tables that grow with the shop's business: a scrape must never read one from end to end.
GROWING_TABLES = {"django_celery_results_taskresult", "orders_order", "orders_orderevent", "notifications_notification"}


@pytest.fixture(autouse=True)
def recent_census() -> None:
    """A fresh answer of the workers (none online), so these tests do not wait for a broadcast."""
    RecentAnswer.objects.create(key="workers", answer={"workers": {}, "error": None}, asked_at=timezone.now())


def result(task: str, status: str, done: datetime) -> None:
    row = TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=task, status=status)
    TaskResult.objects.filter(pk=row.pk).update(date_done=done)


def full_count() -> dict[tuple[str, str], int]:
    rows = TaskResult.objects.values("task_name", "status").annotate(count=Count("pk")).order_by()
    return {(row["task_name"], row["status"]): row["count"] for row in rows}


def test_every_existing_name_is_still_exported(admin_client) -> None:
    text = admin_client.get("/metrics").content.decode()
    assert {family.name for family in text_string_to_metric_families(text)} >= EXISTING_NAMES


def test_stored_result_counts_match_a_full_count_as_hours_settle_and_expire() -> None:
    now = datetime(2026, 3, 18, 12, 30, tzinfo=UTC)
    for done, task, status in [
        (now - timedelta(hours=5, minutes=20), "a", "FAILURE"),
        (now - timedelta(hours=5), "a", "SUCCESS"),
        (now - timedelta(hours=3), "b", "SUCCESS"),
        (now - timedelta(hours=3), "b", "SUCCESS"),
        (now - timedelta(minutes=95), "a", "SUCCESS"),
        (now - timedelta(minutes=10), "b", "STARTED"),
        (now, "a", "SUCCESS"),
    ]:
        result(task, status, done)
    assert result_counts.stored_result_counts(now) == full_count()
    # The settled hours (11:00 and earlier are over an hour old at 12:30) are tallied; the oldest is counted live.
    assert set(TaskResultTally.objects.values_list("hour", flat=True)) == {
        datetime(2026, 3, 18, 9, 0, tzinfo=UTC),
        datetime(2026, 3, 18, 10, 0, tzinfo=UTC),
    }

    # Expiry deletes the oldest results: their hour's tally goes, and the new oldest hour is counted live.
    TaskResult.objects.filter(date_done__lt=now - timedelta(hours=4)).delete()
    later = now + timedelta(hours=2)
    result("b", "SUCCESS", later)
    assert result_counts.stored_result_counts(later) == full_count()
    assert not TaskResultTally.objects.filter(hour__lte=datetime(2026, 3, 18, 9, 30, tzinfo=UTC)).exists()

    TaskResult.objects.all().delete()
    assert result_counts.stored_result_counts(later) == {}
    assert not TaskResultTally.objects.exists()


def test_a_settled_hour_is_counted_once_and_read_from_its_tally() -> None:
    now = datetime(2026, 3, 18, 12, 30, tzinfo=UTC)
    result("a", "SUCCESS", now - timedelta(hours=6))
    result("a", "SUCCESS", now - timedelta(hours=3))
    assert result_counts.stored_result_counts(now)[("a", "SUCCESS")] == 2
    # A row written into a settled hour after it was tallied (which Celery never does: date_done is "now")
    # is not seen: proof that the hour is not counted again.
    result("a", "SUCCESS", now - timedelta(hours=3, minutes=1))
    assert result_counts.stored_result_counts(now)[("a", "SUCCESS")] == 2


def walk(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from walk(child)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the query plans are PostgreSQL's")
def test_every_query_of_a_scrape_reads_the_growing_tables_through_an_index(admin_client, customer) -> None:
    now = timezone.now()
    for hours in (30, 5, 0):
        result("orders.tasks.process_order", "SUCCESS", now - timedelta(hours=hours))
    result("orders.tasks.process_order", "FAILURE", now - timedelta(hours=1))
    place(customer, (product(), 1))
    Notification.objects.create(recipient="a@example.com", kind="test", subject="s", body_text="b", dedup_key="k")

    with CaptureQueriesContext(connection) as captured:
        assert admin_client.get("/metrics").status_code == 200
    selects = [
        query["sql"] for query in captured.captured_queries if query["sql"].lstrip().upper().startswith("SELECT")
    ]
    full_scans = []
    with connection.cursor() as cursor:
        # With sequential scans priced out, the planner still picks one only where no index can serve.
        cursor.execute("SET enable_seqscan = off")
        try:
            for sql in selects:
                cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
                plan = cursor.fetchone()[0][0]["Plan"]
                full_scans += [
                    (node["Relation Name"], sql[:200])
                    for node in walk(plan)
                    if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in GROWING_TABLES
                ]
        finally:
            cursor.execute("RESET enable_seqscan")
    assert len(selects) > 10
    assert full_scans == []


def test_unfinished_orders_show_how_long_the_longest_waiting_one_has_not_moved(admin_client, customer) -> None:
    item = product()
    stuck, fresh = place(customer, (item, 1)), place(customer, (item, 1))
    Order.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - timedelta(minutes=40))
    Order.objects.filter(pk=fresh.pk).update(status=Order.Status.PROCESSING)
    metrics = scrape(admin_client)
    unfinished = metrics["backoffice_orders_unfinished"]
    assert unfinished[(("status", "pending"),)] == 1 and unfinished[(("status", "processing"),)] == 1
    idle = metrics["backoffice_orders_oldest_unfinished_seconds"]
    assert 40 * 60 <= idle[(("status", "pending"),)] < 41 * 60
    assert idle[(("status", "processing"),)] < 60


def test_emails_past_their_deadline_are_counted_by_class(admin_client, settings) -> None:
    settings.EMAIL_SEND_DEADLINE = timedelta(minutes=15)
    settings.EMAIL_BULK_SEND_DEADLINE = timedelta(days=1)
    now = timezone.now()

    def email(key: str, kind: str, age: timedelta, status: str = "queued", expires: timedelta | None = None) -> None:
        Notification.objects.create(
            recipient="a@example.com",
            kind=kind,
            subject="s",
            body_text="b",
            dedup_key=key,
            status=status,
            created_at=now - age,
            expires_at=now - expires if expires is not None else None,
        )

    email("late", "order_completed", timedelta(minutes=25))  # 10 minutes past its deadline
    email("reset", "password_reset", timedelta(minutes=2), expires=timedelta(minutes=1))  # expired a minute ago
    email("fresh", "order_completed", timedelta(minutes=5))
    email("sent", "order_completed", timedelta(hours=3), status="sent")
    email("campaign", "campaign", timedelta(hours=3))  # the rate limit spreads bulk mail out
    email("old digest", "digest", timedelta(days=2))

    metrics = scrape(admin_client)
    count = metrics["backoffice_emails_past_deadline"]
    seconds = metrics["backoffice_emails_past_deadline_max_seconds"]
    assert count[(("class", "transactional"),)] == 2
    assert 10 * 60 <= seconds[(("class", "transactional"),)] < 11 * 60
    assert count[(("class", "bulk"),)] == 1
    assert 86400 <= seconds[(("class", "bulk"),)] < 86400 + 60


def test_workers_per_queue_and_the_answers_age_come_from_the_recent_census(admin_client) -> None:
    RecentAnswer.objects.filter(key="workers").update(
        answer={"workers": {"high@a": ["high_priority"], "all@b": ["default", "high_priority"]}, "error": None},
        asked_at=timezone.now() - timedelta(seconds=4),
    )
    metrics = scrape(admin_client)
    assert metrics["backoffice_workers_online"][()] == 2
    assert metrics["backoffice_queue_workers"] == {
        (("queue", "high_priority"),): 2,
        (("queue", "default"),): 1,
        (("queue", "low_priority"),): 0,
    }
    assert 4 <= metrics["backoffice_workers_ping_age_seconds"][()] < 30


def test_the_failures_of_the_last_day_are_counted_per_task(admin_client) -> None:
    now = timezone.now()
    result("orders.tasks.process_order", "FAILURE", now - timedelta(hours=2))
    result("orders.tasks.process_order", "FAILURE", now - timedelta(hours=30))
    result("reports.tasks.generate_report", "SUCCESS", now)
    failures = scrape(admin_client)["backoffice_task_failures_24h"]
    assert failures == {(("task", "orders.tasks.process_order"),): 1}


def test_the_indexes_on_the_results_table_name_its_real_columns() -> None:
    """The 0002 migration's SQL is plain text; check its table and columns against django-celery-results' model."""
    from importlib import import_module

    migration = import_module("ops.migrations.0002_task_result_indexes")
    assert TaskResult._meta.db_table == migration.TABLE
    columns = {field.column for field in TaskResult._meta.fields}
    for definition in migration.INDEXES.values():
        named = re.findall(r"\b([a-z_]+)\b", definition.split("(", 1)[1])
        assert set(named) - {"where", "is", "not", "null", "failure"} <= columns, definition
    with connection.cursor() as cursor:
        present = {index for index in connection.introspection.get_constraints(cursor, TaskResult._meta.db_table)}
    assert set(migration.INDEXES) <= present


def test_metrics_are_served_without_the_https_redirect_to_a_scraper_inside_the_network(settings) -> None:
    """Compose's Prometheus scrapes http://web:8000/metrics, not through the HTTPS proxy."""
    from django.test import Client

    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS_TOKEN = "scrape-token"
    client = Client()  # a new client builds its middleware with these settings
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-token"}).status_code == 200
    assert client.get("/metrics").status_code == 401  # still behind the token
    assert client.get("/health/").status_code == 301  # everything else is redirected to https
