"""Is a schedule row one beat can run? The one check behind the schedule admin's forms, its lists and beat itself.

django-celery-beat trusts its rows: headers that are JSON but not an object made
beat exit at start-up (a crash loop under compose's restart policy, so every
periodic job stopped), and a crontab that never fires (31 February) or does not
parse (minute -1) broke the admin's lists. These checks say what is wrong, by field.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import ParseException
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from core import json_input

# Errors the schedule classes raise for values they cannot use.
SCHEDULE_ERRORS = (ValueError, TypeError, ParseException, OverflowError, RuntimeError)

JSON_FIELDS = (
    ("args", list, "a JSON list, e.g. [] or [42]"),
    ("kwargs", dict, 'a JSON object, e.g. {} or {"days": 7}'),
    ("headers", dict, "a JSON object, e.g. {}"),
)


def json_field_problem(field: str, text: str | None) -> str | None:
    """What is wrong with a schedule's args, kwargs or headers text, or None."""
    expected, example = next((kind, example) for name, kind, example in JSON_FIELDS if name == field)
    try:
        value: Any = json_input.loads(text) if text not in (None, "") else expected()
    except json_input.JsonInputError as exc:
        return f"{exc} Give {example}."
    if not isinstance(value, expected):
        return f"This must be {example}, not {type(value).__name__}."
    return None


def crontab_problem(crontab: CrontabSchedule) -> str | None:
    """What is wrong with a crontab: a field that does not parse, or a day that never comes (31 February)."""
    try:
        schedule = crontab.schedule
        schedule.remaining_estimate(timezone.now())
    except SCHEDULE_ERRORS as exc:
        return f"This crontab cannot run: {exc}"
    return None


def interval_problem(interval: IntervalSchedule) -> str | None:
    if interval.every is None or interval.every < 1:
        return "An interval must be at least 1."
    return None


def problems(task: PeriodicTask) -> dict[str, str]:
    """Field name → what is wrong, for a periodic task row as it is stored; empty when beat can run it."""
    found: dict[str, str] = {}
    for field, _, _ in JSON_FIELDS:
        problem = json_field_problem(field, getattr(task, field))
        if problem:
            found[field] = problem
    schedules = [name for name in ("interval", "crontab", "solar", "clocked") if getattr(task, f"{name}_id")]
    if len(schedules) != 1:
        found["interval"] = "Choose exactly one schedule: an interval, a crontab, a solar event or a clocked time."
    elif task.crontab_id and (problem := crontab_problem(task.crontab)):
        found["crontab"] = problem
    elif task.interval_id and (problem := interval_problem(task.interval)):
        found["interval"] = problem
    return found


def describe(found: dict[str, str]) -> str:
    return "; ".join(f"{field}: {problem}" for field, problem in found.items())
