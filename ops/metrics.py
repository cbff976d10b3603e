"""Prometheus metrics, computed at scrape time from shared state (Redis, the database, a worker ping).

Web cannot read counters that live inside worker processes, so everything here
comes from places every process shares. Task durations are in the structured
task logs (ops/worker.py) and in Flower.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count
from django.utils import timezone
from django_celery_results.models import TaskResult
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifications.models import Notification
from ops import health
from orders.models import Order, OrderEvent


class BackofficeCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        day_ago = timezone.now() - timedelta(hours=24)

        up = GaugeMetricFamily("backoffice_up", "1 when the part answers its health check.", labels=["part"])
        parts = health.readiness()
        for name, part in parts.items():
            up.add_metric([name], 1 if part.ok else 0)
        yield up

        depth = GaugeMetricFamily("backoffice_queue_depth", "Messages waiting in each queue.", labels=["queue"])
        for queue, count in parts["broker"].data.get("queues", {}).items():
            depth.add_metric([queue], count)
        yield depth

        yield GaugeMetricFamily(
            "backoffice_workers_online",
            "Workers that answered a ping.",
            value=len(parts["workers"].data.get("online", [])),
        )
        age = parts["beat"].data.get("age_seconds")
        yield GaugeMetricFamily(
            "backoffice_beat_heartbeat_age_seconds", "Seconds since beat's leader last ticked (NaN: never).",
            value=float("nan") if age is None else age,
        )  # fmt: skip

        results = GaugeMetricFamily(
            "backoffice_task_results", "Stored task results by task and state.", labels=["task", "state"]
        )
        for row in TaskResult.objects.values("task_name", "status").annotate(count=Count("pk")).order_by():
            results.add_metric([row["task_name"] or "", row["status"]], row["count"])
        yield results

        failures = GaugeMetricFamily(
            "backoffice_task_failures_24h", "Failed tasks in the last 24 hours.", labels=["task"]
        )
        for name, count in health.failures_since(24):
            failures.add_metric([name], count)
        yield failures

        yield GaugeMetricFamily(
            "backoffice_order_retries_24h", "Order pipeline retries scheduled in the last 24 hours.",
            value=OrderEvent.objects.filter(kind=OrderEvent.Kind.RETRY, created_at__gte=day_ago).count(),
        )  # fmt: skip
        orders = GaugeMetricFamily("backoffice_orders_unfinished", "Orders not finished yet.", labels=["status"])
        for status in (Order.Status.PENDING, Order.Status.PROCESSING):
            orders.add_metric([status], Order.objects.filter(status=status).count())
        yield orders
        emails = GaugeMetricFamily("backoffice_emails_unsent", "Emails not sent yet.", labels=["status"])
        for status in (Notification.Status.QUEUED, Notification.Status.SENDING):
            emails.add_metric([status], Notification.objects.filter(status=status).count())
        yield emails
