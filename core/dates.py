"""Days and weeks in the shop's time zone (TIME_ZONE): what "a day" of orders means to reports and emails."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings


def start_of_day(day: date) -> datetime:
    """Midnight at the start of `day` in TIME_ZONE, as an aware datetime."""
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))


def day_bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """[start, end) of the days first..last (both included) in TIME_ZONE: for created_at__gte / __lt."""
    return start_of_day(first), start_of_day(last + timedelta(days=1))


def iso_week_containing(day: date) -> tuple[date, date]:
    """Monday and Sunday of the ISO week that `day` is in."""
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)


def previous_iso_week(today: date) -> tuple[date, date]:
    """Monday and Sunday of the ISO week before the one `today` is in."""
    return iso_week_containing(today - timedelta(days=7))
