"""Prometheus metrics of the web process: shared state read at scrape time, every read bounded.

Web cannot read counters that live inside worker processes; each worker exports
its own (ops/worker_metrics.py). What is here comes from places every process
shares, and a scrape stays cheap however large the tables grow:

- workers online and per queue: the recent census (ops/census.py), not a 0.5 s
  broadcast per scrape;
- stored results by task and state: hourly tallies plus the newest hours
  (ops/result_counts.py), not a GROUP BY over the whole results table;
- failures of the last day, order retries, unfinished orders and unsent emails:
  each read through an index that holds only those rows (failures, retries,
  unfinished rows); a test checks every query of a scrape against the planner;
- schedules: a few index probes per enabled schedule (ops/lateness.py).

Business failures (a declined order, an email failed for good) end their task in
FAILURE (OrderFailed, EmailFailed), so `backoffice_task_failures_24h` counts them
through health.failures_since(), which the overview reads too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifications.models import Notification
from ops import census, health, lateness, result_counts
from orders.models import Order, OrderEvent

UNFINISHED_ORDERS = (Order.Status.PENDING, Order.Status.PROCESSING)
UNSENT_EMAILS = (Notification.Status.QUEUED, Notification.Status.SENDING)


def gauge(
    name: str, documentation: str, labels: list[str] | None = None, value: float | None = None
) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels, value=value)


def _seconds_since(moment: datetime | None, now: datetime) -> float:
    return max((now - moment).total_seconds(), 0.0) if moment else 0.0


class BackofficeCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        workers = census.recent()
        parts = health.readiness(workers)
        yield from self.health(parts, workers, now)
        yield from self.tasks()
        yield from self.schedules(now)
        yield from self.orders(now)
        yield from self.emails(now)

    def health(self, parts: dict[str, health.Part], workers: census.Census, now: datetime) -> Iterator[Metric]:
        up = gauge("backoffice_up", "1 when the part answers its health check.", ["part"])
        for name, part in parts.items():
            up.add_metric([name], 1 if part.ok else 0)
        yield up
        depth = gauge("backoffice_queue_depth", "Messages waiting in each queue.", ["queue"])
        for queue, count in parts["broker"].data.get("queues", {}).items():
            depth.add_metric([queue], count)
        yield depth
        yield gauge("backoffice_workers_online", "Workers that answered the last ping.", value=len(workers.online))
        per_queue = gauge("backoffice_queue_workers", "Online workers consuming each queue.", ["queue"])
        for queue, count in workers.workers_per_queue().items():
            per_queue.add_metric([queue], count)
        yield per_queue
        yield gauge(
            "backoffice_workers_ping_age_seconds",
            "Age of the ping answer the worker figures come from.",
            value=workers.age_seconds(now),
        )
        age = parts["beat"].data.get("age_seconds")
        yield gauge(
            "backoffice_beat_heartbeat_age_seconds",
            "Seconds since beat's leader last ticked (NaN: never).",
            value=float("nan") if age is None else age,
        )
        yield gauge(
            "backoffice_beat_heartbeat_max_age_seconds",
            "BEAT_HEARTBEAT_MAX_AGE: an older heartbeat means beat is dead.",
            value=settings.BEAT_HEARTBEAT_MAX_AGE.total_seconds(),
        )

    def tasks(self) -> Iterator[Metric]:
        results = gauge("backoffice_task_results", "Stored task results by task and state.", ["task", "state"])
        for (task, state), count in sorted(result_counts.stored_result_counts().items()):
            results.add_metric([task, state], count)
        yield results
        failures = gauge("backoffice_task_failures_24h", "Failed tasks in the last 24 hours.", ["task"])
        for name, count in health.failures_since(24):
            failures.add_metric([name], count)
        yield failures

    def schedules(self, now: datetime) -> Iterator[Metric]:
        labels = ["schedule", "task"]
        late = gauge("backoffice_schedule_late", "1 when an enabled schedule missed its expected success.", labels)
        overdue = gauge(
            "backoffice_schedule_overdue_seconds",
            "How long an enabled schedule's owed success is overdue (0: on time).",
            labels,
        )
        last_success = gauge(
            "backoffice_schedule_last_success_timestamp_seconds",
            "Unix time of an enabled schedule's last successful run (NaN: none stored).",
            labels,
        )
        for check in lateness.schedule_checks(now):
            if not check.checked:
                continue
            late.add_metric([check.name, check.task], 1 if check.late else 0)
            overdue.add_metric([check.name, check.task], check.overdue_seconds(now))
            stamp = check.last_success_at.timestamp() if check.last_success_at else float("nan")
            last_success.add_metric([check.name, check.task], stamp)
        yield from (late, overdue, last_success)

    def orders(self, now: datetime) -> Iterator[Metric]:
        yield gauge(
            "backoffice_order_retries_24h",
            "Order pipeline retries scheduled in the last 24 hours.",
            value=OrderEvent.objects.filter(
                kind=OrderEvent.Kind.RETRY, created_at__gte=now - timedelta(hours=24)
            ).count(),
        )
        rows = {
            row["status"]: row
            for row in Order.objects.filter(status__in=UNFINISHED_ORDERS)
            .values("status")
            .annotate(count=Count("pk"), least_recent=Min("updated_at"))
            .order_by()
        }
        unfinished = gauge("backoffice_orders_unfinished", "Orders not finished yet.", ["status"])
        idle = gauge(
            "backoffice_orders_oldest_unfinished_seconds",
            "Seconds since the unfinished order that waited longest last moved (0: none).",
            ["status"],
        )
        for status in UNFINISHED_ORDERS:
            row = rows.get(status, {})
            unfinished.add_metric([status], row.get("count", 0))
            idle.add_metric([status], _seconds_since(row.get("least_recent"), now))
        yield from (unfinished, idle)

    def emails(self, now: datetime) -> Iterator[Metric]:
        counts = dict(
            Notification.objects.filter(status__in=UNSENT_EMAILS)
            .values_list("status")
            .annotate(count=Count("pk"))
            .order_by()
        )
        unsent = gauge("backoffice_emails_unsent", "Emails not sent yet.", ["status"])
        for status in UNSENT_EMAILS:
            unsent.add_metric([status], counts.get(status, 0))
        yield unsent
        overdue = gauge(
            "backoffice_emails_past_deadline",
            "Unsent emails past their deadline (expires_at, or EMAIL_SEND_DEADLINE / EMAIL_BULK_SEND_DEADLINE).",
            ["class"],
        )
        worst = gauge(
            "backoffice_emails_past_deadline_max_seconds",
            "How far past its deadline the most overdue unsent email is (0: none).",
            ["class"],
        )
        for email_class, (count, seconds) in emails_past_deadline(now).items():
            overdue.add_metric([email_class], count)
            worst.add_metric([email_class], seconds)
        yield from (overdue, worst)


def emails_past_deadline(now: datetime) -> dict[str, tuple[int, float]]:
    """{"transactional" | "bulk": (unsent emails past their deadline, seconds the worst is past it)}.

    An email's deadline is its expires_at when it has one, else its creation plus
    EMAIL_SEND_DEADLINE (one by one, on high_priority) or EMAIL_BULK_SEND_DEADLINE
    (campaigns and digests, which the rate limit spreads out). One query, through
    the index of unfinished rows.
    """
    classes = {
        "transactional": (~Q(kind__in=Notification.BULK_KINDS), settings.EMAIL_SEND_DEADLINE),
        "bulk": (Q(kind__in=Notification.BULK_KINDS), settings.EMAIL_BULK_SEND_DEADLINE),
    }
    aggregates = {}
    for name, (kind, deadline) in classes.items():
        past = Q(expires_at__lte=now) | Q(created_at__lte=now - deadline)
        aggregates[f"{name}_count"] = Count("pk", filter=kind & past)
        aggregates[f"{name}_created"] = Min("created_at", filter=kind)
        aggregates[f"{name}_expires"] = Min("expires_at", filter=kind)
    row = Notification.objects.filter(status__in=UNSENT_EMAILS).aggregate(**aggregates)
    answer = {}
    for name, (_kind, deadline) in classes.items():
        due = [
            moment
            for moment in (row[f"{name}_expires"], row[f"{name}_created"] and row[f"{name}_created"] + deadline)
            if moment
        ]
        answer[name] = (row[f"{name}_count"], _seconds_since(min(due), now) if due else 0.0)
    return answer
