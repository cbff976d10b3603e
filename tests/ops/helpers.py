"""Helpers for operations tests."""

from __future__ import annotations

from django_celery_beat.models import IntervalSchedule


def schedule_form(interval: IntervalSchedule | None = None, **fields: object) -> dict[str, object]:
    """The schedule admin's add/change form, every field filled as the page sends it; `fields` override."""
    data = {
        "name": "Nightly sweep",
        "regtask": "orders.tasks.check_pending_orders",
        "task": "",
        "enabled": "on",
        "interval": interval.pk if interval else "",
        "args": "[]",
        "kwargs": "{}",
        "headers": "{}",
        "expire_seconds": "",
        "description": "",
        "priority": "",
        "queue": "",
        "exchange": "",
        "routing_key": "",
    }
    data.update(fields)
    return data
