"""The project's periodic tasks, installed into django-celery-beat's tables by manage.py setup_schedules.

They are not in CELERY_BEAT_SCHEDULE on purpose: beat copies that setting into
the database at every start, which would undo what staff changed in the admin.
Beat adds celery.backend_cleanup by itself (because result_expires is set).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from ops import schedule_audit

MINUTE, HOUR, DAY = 60, 3600, 86400
AUDIT_VIA = "manage.py setup_schedules"


@dataclass(frozen=True)
class DefaultSchedule:
    name: str
    task: str
    description: str
    # Shorter than the period: a run still queued when the next one is due is dropped, not piled up.
    expire_seconds: int
    every_seconds: int | None = None
    crontab: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.every_seconds:
            return "every minute" if self.every_seconds == MINUTE else f"every {self.every_seconds} seconds"
        return f"cron {self.crontab_fields()} ({settings.TIME_ZONE})"

    def crontab_fields(self) -> str:
        c = {"minute": "*", "hour": "*", "day_of_month": "*", "month_of_year": "*", "day_of_week": "*", **self.crontab}
        return " ".join(c[key] for key in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week"))


DEFAULTS = [
    DefaultSchedule(
        "Orders: re-send stuck orders",
        "orders.tasks.check_pending_orders",
        "Re-enqueue pending orders that were never processed and orders whose lease expired.",
        expire_seconds=50,
        every_seconds=MINUTE,
    ),
    DefaultSchedule(
        "Notifications: re-send stale emails",
        "notifications.tasks.requeue_stale_notifications",
        "Re-enqueue queued emails that were never picked up (e.g. the broker was down); expire late ones.",
        expire_seconds=50,
        every_seconds=MINUTE,
    ),
    DefaultSchedule(
        "Reports: re-send stuck reports",
        "reports.tasks.check_stuck_reports",
        "Re-send reports and slices whose task was lost, finish reports whose slices are all done, "
        "fail the ones started too often.",
        expire_seconds=50,
        every_seconds=MINUTE,
    ),
    DefaultSchedule(
        "Notifications: delete old emails",
        "notifications.tasks.cleanup_notifications",
        "Delete sent and expired emails older than NOTIFICATION_RETENTION.",
        expire_seconds=50 * MINUTE,
        crontab={"minute": "17"},
    ),
    DefaultSchedule(
        "Operations: delete old failures",
        "ops.tasks.cleanup_failures",
        "Delete recorded failures older than FAILURE_RETENTION.",
        expire_seconds=HOUR,
        crontab={"minute": "25", "hour": "4"},
    ),
    DefaultSchedule(
        "Reports: daily sales",
        "reports.tasks.generate_daily_report",
        "Yesterday's sales report.",
        expire_seconds=HOUR,
        crontab={"minute": "5", "hour": "0"},
    ),
    DefaultSchedule(
        "Reports: weekly sales",
        "reports.tasks.generate_weekly_report",
        "Last ISO week's sales report.",
        expire_seconds=DAY,
        crontab={"minute": "10", "hour": "0", "day_of_week": "1"},
    ),
    DefaultSchedule(
        "Reports: monthly sales",
        "reports.tasks.generate_monthly_report",
        "Last month's sales report.",
        expire_seconds=DAY,
        crontab={"minute": "15", "hour": "0", "day_of_month": "1"},
    ),
    DefaultSchedule(
        "Notifications: weekly digest",
        "notifications.tasks.send_weekly_digest",
        "Each customer's orders of the ISO week that just ended.",
        expire_seconds=12 * HOUR,
        crontab={"minute": "0", "hour": "9", "day_of_week": "1"},
    ),
]
BY_NAME = {default.name: default for default in DEFAULTS}


def _schedule_fields(default: DefaultSchedule) -> dict[str, object]:
    if default.every_seconds:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=default.every_seconds, period=IntervalSchedule.SECONDS
        )
        return {"interval": interval, "crontab": None, "solar": None, "clocked": None}
    spec = {
        "minute": "*",
        "hour": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "day_of_week": "*",
        **default.crontab,
    }
    # The crontab carries TIME_ZONE explicitly, so "00:05" means 00:05 in the shop's zone.
    crontab = CrontabSchedule.objects.filter(**spec, timezone=settings.TIME_ZONE).first()
    if crontab is None:
        crontab = CrontabSchedule.objects.create(**spec, timezone=settings.TIME_ZONE)
    return {"interval": None, "crontab": crontab, "solar": None, "clocked": None}


def _default_fields(default: DefaultSchedule) -> dict[str, object]:
    return {
        "task": default.task,
        "description": default.description,
        "args": "[]",
        "kwargs": "{}",
        "queue": None,
        "exchange": None,
        "routing_key": None,
        "priority": None,
        "headers": "{}",
        "expires": None,
        "expire_seconds": default.expire_seconds,
        "one_off": False,
        "enabled": True,
        "start_time": None,
        **_schedule_fields(default),
    }


def install_missing() -> list[str]:
    """Create the default schedules that do not exist by name; existing rows (and staff edits) are left alone."""
    created = []
    with transaction.atomic():
        existing = set(PeriodicTask.objects.filter(name__in=BY_NAME).values_list("name", flat=True))
        for default in DEFAULTS:
            if default.name not in existing:
                task = PeriodicTask.objects.create(name=default.name, **_default_fields(default))
                schedule_audit.record(task, None, schedule_audit.snapshot(task), actor=None, via=AUDIT_VIA)
                created.append(default.name)
    return created


def reset(name: str) -> PeriodicTask:
    """Restore one default schedule exactly (creating it if it was deleted). KeyError for an unknown name."""
    default = BY_NAME[name]
    with transaction.atomic():
        before = schedule_audit.snapshot(PeriodicTask.objects.select_for_update().filter(name=name).first())
        task, _ = PeriodicTask.objects.update_or_create(name=name, defaults=_default_fields(default))
        schedule_audit.record(task, before, schedule_audit.snapshot(task), actor=None, via=f"{AUDIT_VIA} --reset")
    return task


def differences(task: PeriodicTask) -> list[str]:
    """How a schedule row differs from its default (empty when it is the default); reads only."""
    default = BY_NAME[task.name]
    changed = []
    if task.task != default.task:
        changed.append("task")
    if default.every_seconds:
        interval = task.interval
        same = interval is not None and (interval.every, interval.period) == (
            default.every_seconds,
            IntervalSchedule.SECONDS,
        )
    else:
        spec = {
            "minute": "*",
            "hour": "*",
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "*",
            **default.crontab,
        }
        crontab = task.crontab
        same = crontab is not None and str(crontab.timezone) == settings.TIME_ZONE
        same = same and all(getattr(crontab, key) == value for key, value in spec.items())
    if not same or task.solar_id or task.clocked_id:
        changed.append("schedule")
    if not task.enabled:
        changed.append("disabled")
    if task.args not in ("[]", "") or task.kwargs not in ("{}", ""):
        changed.append("arguments")
    if task.expire_seconds != default.expire_seconds or task.expires:
        changed.append("expiry")
    if task.queue or task.priority is not None:
        changed.append("queue/priority")
    return changed
