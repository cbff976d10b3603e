"""A periodic task's schedule in plain words, and its next run times in TIME_ZONE."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

PERIOD_WORDS = {IntervalSchedule.MICROSECONDS: "microsecond"}


def in_words(task: PeriodicTask) -> str:
    if task.interval_id:
        interval = task.interval
        every, unit = interval.every, PERIOD_WORDS.get(interval.period, interval.period.rstrip("s"))
        if interval.period != IntervalSchedule.MICROSECONDS:
            seconds = timedelta(**{interval.period: interval.every}).total_seconds()
            for size, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
                if seconds % size == 0:
                    every, unit = int(seconds // size), name
                    break
        return f"every {unit}" if every == 1 else f"every {every} {unit}s"
    if task.crontab_id:
        return task.crontab.human_readable  # cron-descriptor's English, with the crontab's time zone
    if task.clocked_id:
        return f"once, at {timezone.localtime(task.clocked.clocked_time):%Y-%m-%d %H:%M %Z}"
    if task.solar_id:
        return str(task.solar)
    return "no schedule"


def next_runs(task: PeriodicTask, count: int = 5, now: datetime | None = None) -> list[datetime]:
    """The next `count` times beat will send this task, in TIME_ZONE (fewer for one-off and clocked tasks)."""
    zone = ZoneInfo(settings.TIME_ZONE)
    now = now or timezone.now()
    if not task.enabled or (task.one_off and task.total_run_count):
        return []
    if task.expires and task.expires <= now:
        return []
    runs: list[datetime] = []
    start = max(now, task.start_time) if task.start_time else now
    if task.interval_id:
        every = timedelta(**{task.interval.period: task.interval.every})
        upcoming = max(task.last_run_at + every, start) if task.last_run_at else start + every
        runs = [upcoming + every * index for index in range(count)]
    elif task.crontab_id:
        schedule = task.crontab.schedule
        last = max(task.last_run_at or now, start)
        for _ in range(count):
            base, delta, _now = schedule.remaining_delta(last)
            last = base + delta
            runs.append(last)
    elif task.clocked_id:
        if task.clocked.clocked_time >= now or not task.last_run_at:
            runs = [task.clocked.clocked_time]
    elif task.solar_id:
        runs = [now + task.solar.schedule.remaining_estimate(task.last_run_at or now)]
    if task.one_off:
        runs = runs[:1]
    return [run.astimezone(zone) for run in runs]
