"""Missed runs: when each enabled schedule should last have succeeded, and whether it did.

A run due at `d` must have succeeded by `d + grace`, where grace is SCHEDULE_GRACE
(time to be picked up) plus the task's hard time limit (the longest a run may
take). So at `now` the latest run that must be finished is the last one due at or
before `now - grace`: for a crontab its last fire time, for an interval some
moment after `now - grace - every`. A schedule is late when no SUCCESS result
carrying its name (django-celery-results stores `periodic_task_name`) was
recorded since then.

Nothing is owed before beat could first send the schedule. Beat itself counts
from `last_run_at`, or from `date_changed` for a row it has never sent, so a
schedule just created, or re-enabled through its form (which clears
`last_run_at`), owes nothing until its first run plus grace. Once beat has sent
it, its first send is counted back from the last one by `total_run_count`
periods, or is its first stored result if that is earlier.

This covers a task that fails every time (FAILURE results), one that no worker
takes (beat sent it, nothing was stored) and one whose message expired on the
way (the worker stores REVOKED "expired"), and says which it is. Each schedule
costs a few index probes (the last success has an index of its own: see
ops/migrations/0002_task_result_indexes.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from celery import states
from celery.schedules import crontab
from django.conf import settings
from django.db import DatabaseError
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from config import celery_app
from ops import catalog
from ops.health import Part
from ops.schedule_checks import problems as row_problems

# A crontab such as "Feb 29 on a Monday" fires once in 28 years; looking back
# further than five years is pointless for a check whose results expire in days.
LOOKBACK_DAYS = 5 * 366
# Sends of a schedule counted back to find its first: 100 periods is older than any grace.
FIRST_SEND_LOOKBACK = 100


@dataclass(frozen=True)
class LastResult:
    status: str
    done_at: datetime


@dataclass(frozen=True)
class ScheduleCheck:
    """One enabled schedule: whether it is late, since when a success is owed, and why."""

    name: str
    task: str
    # A success must have been recorded at or after this moment; None when nothing is owed yet.
    owed_since: datetime | None
    # owed_since plus the grace: when the owed success became overdue.
    deadline: datetime | None
    last_success_at: datetime | None
    late: bool
    # "failing", "expired", "not taken", "not sent"... for lists; `reason` says it in full
    cause: str
    reason: str
    checked: bool = True
    pk: int | None = None

    def overdue_seconds(self, now: datetime) -> float:
        return max((now - self.deadline).total_seconds(), 0.0) if self.late and self.deadline else 0.0

    def as_json(self) -> dict[str, object]:
        """For /health/, which anyone may read: the cause, not the reason (it quotes the task's error)."""
        return {
            "name": self.name,
            "task": self.task,
            "owed_since": self.owed_since.isoformat() if self.owed_since else None,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "cause": self.cause,
        }


def grace_for(task_name: str) -> timedelta:
    """SCHEDULE_GRACE plus the task's hard time limit (the project default for tasks this process does not know)."""
    task = catalog.registered(task_name)
    limit = (task.time_limit if task is not None else None) or settings.CELERY_TASK_TIME_LIMIT
    return settings.SCHEDULE_GRACE + timedelta(seconds=limit)


def last_fire(cron: crontab, moment: datetime) -> datetime | None:
    """The latest time at or before `moment` at which the crontab fires (None if none in LOOKBACK_DAYS).

    Celery's crontab only computes forward; this walks back day by day with the
    same rules: a day fires when its weekday (Sunday = 0), day of month and month
    all match, in the crontab's time zone.
    """
    zone = cron.tz  # django-celery-beat's crontabs carry their own; Celery's use the app's
    local = moment.astimezone(zone)
    hours = sorted(cron.hour, reverse=True)
    minutes = sorted(cron.minute, reverse=True)
    day: date = local.date()
    for _ in range(LOOKBACK_DAYS):
        if (
            day.month in cron.month_of_year
            and day.day in cron.day_of_month
            and day.isoweekday() % 7 in cron.day_of_week
        ):
            for hour in hours:
                if day == local.date() and hour > local.hour:
                    continue
                for minute in minutes:
                    fire = datetime.combine(day, time(hour, minute), tzinfo=zone)
                    if fire <= local:
                        return fire
        day -= timedelta(days=1)
    return None


def _first_fire_after(task: PeriodicTask, moment: datetime) -> datetime | None:
    if task.crontab_id:
        base, delta, _now = task.crontab.schedule.remaining_delta(moment)
        return base + delta
    if task.interval_id:
        return moment + timedelta(**{task.interval.period: task.interval.every})
    if task.clocked_id:
        return max(task.clocked.clocked_time, moment)
    return None


def _first_send(task: PeriodicTask) -> datetime:
    """When beat first sent a schedule it has sent total_run_count times, the last at last_run_at (at the latest).

    Counted back one period per earlier send, at most FIRST_SEND_LOOKBACK of them:
    further back than that is older than any grace.
    """
    sent = task.last_run_at
    earlier = min(max(task.total_run_count - 1, 0), FIRST_SEND_LOOKBACK)
    if task.interval_id:
        return sent - timedelta(**{task.interval.period: task.interval.every}) * earlier
    if task.crontab_id and earlier:
        cron = task.crontab.schedule
        fire = last_fire(cron, sent)
        for _ in range(earlier):
            fire = last_fire(cron, fire - timedelta(seconds=1)) if fire else None
        return fire or sent
    return sent


def _window_start(task: PeriodicTask, latest_due: datetime) -> datetime | None:
    """The moment after which the latest run that must be finished was due (None: cannot tell)."""
    if task.crontab_id:
        return last_fire(task.crontab.schedule, latest_due)
    if task.interval_id:
        return latest_due - timedelta(**{task.interval.period: task.interval.every})
    if task.clocked_id:
        clocked = task.clocked.clocked_time
        return clocked if clocked <= latest_due else None
    return None


def owed_since(
    task: PeriodicTask,
    now: datetime,
    grace: timedelta,
    first_result_at: datetime | None,
    last_success_at: datetime | None = None,
) -> tuple[datetime | None, datetime | None, bool]:
    """(since when a success is owed, when it became overdue, whether the schedule can be checked at all).

    The first two are None while nothing is owed yet.
    """
    if task.solar_id or not (task.crontab_id or task.interval_id or task.clocked_id):
        return None, None, False  # solar schedules are left to staff; there is no "last sunrise" helper
    if task.expires and task.expires <= now:
        return None, None, True  # beat disables it on its next look
    latest_due = now - grace
    if task.last_run_at is None:
        first_send = _first_fire_after(task, task.date_changed or now)
    else:
        first_send = _first_send(task)
        first_send = min(first_send, first_result_at) if first_result_at else first_send
    if task.start_time:
        first_send = max(first_send, task.start_time) if first_send else None
    if first_send is None or first_send > latest_due:
        return None, None, True
    window = _window_start(task, latest_due)
    if window is None:
        return None, None, True
    since = max(window, first_send)
    if task.interval_id:
        # The run after a success is due one period later (or the first run, if it never succeeded).
        every = timedelta(**{task.interval.period: task.interval.every})
        due = max(last_success_at + every, first_send) if last_success_at else first_send
        return since, due + grace, True
    return since, since + grace, True


def annotate(queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
    """Add what check_of() reads: the last success, the first and the last result of each schedule."""
    results = TaskResult.objects.filter(periodic_task_name=OuterRef("name"))
    latest = results.order_by("-date_done", "-id")
    return queryset.annotate(
        last_success_at=Subquery(results.filter(status=states.SUCCESS).order_by("-date_done").values("date_done")[:1]),
        first_result_at=Subquery(results.order_by("date_done").values("date_done")[:1]),
        last_result_pk=Subquery(latest.values("pk")[:1]),
        last_result_status=Subquery(latest.values("status")[:1]),
        last_result_at=Subquery(latest.values("date_done")[:1]),
    )


def check_of(task: PeriodicTask, now: datetime | None = None) -> ScheduleCheck:
    """The check of one schedule from a row of annotate()'s queryset."""
    now = now or timezone.now()
    grace = grace_for(task.task)
    success = task.last_success_at
    since, deadline, checked = owed_since(task, now, grace, task.first_result_at, success)
    late = since is not None and (success is None or success < since)
    last = LastResult(task.last_result_status, task.last_result_at) if task.last_result_pk else None
    cause, reason = _why_late(task, since, grace, last) if late else ("", "")
    return ScheduleCheck(
        name=task.name,
        task=task.task,
        owed_since=since,
        deadline=deadline,
        last_success_at=success,
        late=late,
        cause=cause,
        reason=reason,
        checked=checked,
        pk=task.pk,
    )


def _why_late(task: PeriodicTask, since: datetime, grace: timedelta, last: LastResult | None) -> tuple[str, str]:
    """(a short cause for lists, the whole reason).

    Beat not sending comes first (nothing else can be true then); then the last
    result since the last success, unless beat has sent the task again more than
    a grace after it, so that later runs were never taken at all.
    """
    when = f"no success since {timezone.localtime(since):%Y-%m-%d %H:%M:%S %Z}"
    sent = task.last_run_at
    if sent is None or sent < since:
        return "not sent", f"{when}: beat has not sent it since (is beat running?)"
    success = task.last_success_at
    if last is not None and (success is None or last.done_at > success) and sent <= last.done_at + grace:
        at = f"{timezone.localtime(last.done_at):%H:%M:%S}"
        if last.status == states.FAILURE:
            return "failing", f"{when}: its runs fail (the last one at {at}, {_error_of(task)})"
        if last.status == states.REVOKED:
            if "expired" in (_error_of(task) or ""):
                return "expired", f"{when}: its message expired before a worker took it (the last at {at})"
            return "revoked", f"{when}: its last run was revoked at {at}"
        return last.status.lower(), f"{when}: its last run is {last.status} since {at}"
    return "not taken", (
        f"{when}: beat sent it at {timezone.localtime(sent):%H:%M:%S} but no worker has taken it"
        f" (is a worker consuming {_queue_of(task)}?)"
    )


def _error_of(task: PeriodicTask) -> str:
    """'ExcType: message' of the schedule's last result, read only for late schedules."""
    value = TaskResult.objects.filter(pk=task.last_result_pk).values_list("result", flat=True).first()
    try:
        error = json.loads(value or "null")
    except ValueError:
        return str(value)[:200]
    if isinstance(error, dict) and "exc_type" in error:
        message = error.get("exc_message")
        text = " ".join(str(part) for part in message) if isinstance(message, list) else str(message or "")
        return f"{error['exc_type']}: {text}"[:200]
    return str(error)[:200]


def _queue_of(task: PeriodicTask) -> str:
    if task.queue:
        return task.queue
    route = celery_app.amqp.router.route({}, task.task)
    queue = route.get("queue")
    return getattr(queue, "name", None) or str(queue or settings.CELERY_TASK_DEFAULT_QUEUE)


def schedule_checks(now: datetime | None = None) -> list[ScheduleCheck]:
    """Every enabled schedule's check, by name; a row beat cannot run is left out (it is broken, not late)."""
    now = now or timezone.now()
    rows = annotate(
        PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab", "clocked", "solar")
    ).order_by("name")
    # Such a row is listed as broken instead, in /health/ and the admin (ops.schedule_checks).
    return [check_of(task, now) for task in rows if not row_problems(task)]


def late_schedules(now: datetime | None = None) -> list[ScheduleCheck]:
    return [check for check in schedule_checks(now) if check.late]


def health_part(now: datetime | None = None) -> Part:
    """Late schedules for /health/'s details; advisory, since a late report must not take web out of service."""
    try:
        late = late_schedules(now)
    except DatabaseError as exc:
        return Part(False, f"cannot read the schedules: {exc}", {"late": []})
    if not late:
        return Part(True, "every enabled schedule succeeded when it should have", {"late": []})
    names = ", ".join(check.name for check in late)
    return Part(False, f"{len(late)} schedule(s) late: {names}", {"late": [check.as_json() for check in late]})
