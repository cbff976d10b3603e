"""Report periods: daily, weekly (ISO, Monday to Sunday), monthly and custom, and the rules a period keeps."""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.utils import timezone

from core.dates import iso_week_containing, previous_iso_week
from core.errors import FieldErrors
from reports.models import Report

Kind = Report.Kind
# The days a report can cover. matplotlib draws dates between the years 1 and 9999
# and pads the axis on both sides, so a report on the first or last days of that
# range fails while drawing, in the worker. No shop order predates 1900.
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9998, 12, 31)


def check_day(day: date, field: str) -> None:
    """FieldErrors unless a report can cover `day` (see FIRST_DAY and LAST_DAY)."""
    if not FIRST_DAY <= day <= LAST_DAY:
        raise FieldErrors({field: [f"Reports cover the days from {FIRST_DAY} to {LAST_DAY}; {day} is outside."]})


def period_containing(kind: str, day: date) -> tuple[date, date]:
    """The daily, weekly (ISO, Monday to Sunday) or monthly period that contains `day`."""
    check_day(day, "date")
    if kind == Kind.DAILY:
        return day, day
    if kind == Kind.WEEKLY:
        return iso_week_containing(day)
    if kind == Kind.MONTHLY:
        first = day.replace(day=1)
        next_first = (first + timedelta(days=32)).replace(day=1)
        return first, next_first - timedelta(days=1)
    raise ValueError(f"{kind!r} has no fixed period")


def previous_period(kind: str, today: date) -> tuple[date, date]:
    """Yesterday, last ISO week or last month, as beat asks for them."""
    if kind == Kind.DAILY:
        return period_containing(kind, today - timedelta(days=1))
    if kind == Kind.WEEKLY:
        return previous_iso_week(today)
    return period_containing(kind, today.replace(day=1) - timedelta(days=1))


def validate_period(start: date, end: date, *, today: date | None = None) -> None:
    today = today or timezone.localdate()
    errors: dict[str, list[str]] = {}
    for name, day in (("start", start), ("end", end)):
        try:
            check_day(day, name)
        except FieldErrors as exc:
            errors.update(exc.errors)
    if errors:
        raise FieldErrors(errors)
    if start > today:
        errors["start"] = ["The start cannot be in the future."]
    if end < start:
        errors["end"] = ["The end is before the start."]
    elif (end - start).days + 1 > settings.REPORT_MAX_RANGE_DAYS:
        errors["end"] = [f"A report covers at most {settings.REPORT_MAX_RANGE_DAYS} days."]
    if errors:
        raise FieldErrors(errors)


def slices(start: date, end: date, days: int) -> list[tuple[date, date]]:
    """Consecutive inclusive (start, end) slices of at most `days` days covering the period."""
    result = []
    while start <= end:
        last = min(end, start + timedelta(days=days - 1))
        result.append((start, last))
        start = last + timedelta(days=1)
    return result
