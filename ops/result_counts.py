"""Stored task results by task and state (`backoffice_task_results`), without counting the whole table per scrape.

The results table holds every task of the last CELERY_RESULT_EXPIRES: millions of
rows on a busy shop, and a GROUP BY over all of them on every scrape grew with
every task. Results are only ever written with `date_done = now` and deleted
oldest first, so an hour of `date_done` that is over an hour old no longer
changes: it is counted once into TaskResultTally and never again. A scrape adds
up the tallies and counts live only what is not settled, each part bounded by
the date_done index:

- the newest one to two hours (still being written);
- the oldest hour, which the expiry may have deleted in part; older tallies are dropped.

What this cannot see: a result whose state changes more than an hour after its
last write (a retry that waited over an hour in a queue) stays counted under its
old state, and a single result deleted by hand stays counted, until its hour
expires.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Max, Min, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone
from django_celery_results.models import TaskResult

from ops.models import TaskResultTally

HOUR = timedelta(hours=1)
# Rows are written with date_done = now; an hour this old is no longer written to.
SETTLE = HOUR


def _floor_hour(moment: datetime) -> datetime:
    """The start of the moment's hour in UTC (a zone with a half-hour offset would not line up)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _tally(start: datetime, end: datetime) -> None:
    """Count the settled hours in [start, end) into TaskResultTally (one bounded GROUP BY)."""
    if start >= end:
        return
    rows = (
        TaskResult.objects.filter(date_done__gte=start, date_done__lt=end)
        .annotate(hour=TruncHour("date_done", tzinfo=UTC))
        .values("hour", "task_name", "status")
        .annotate(count=Count("pk"))
        .order_by()
    )
    # Two scrapes may count the same hour at once; both get the same figures.
    TaskResultTally.objects.bulk_create(
        [
            TaskResultTally(
                hour=row["hour"], task_name=row["task_name"] or "", status=row["status"], count=row["count"]
            )
            for row in rows
        ],
        ignore_conflicts=True,
    )


def stored_result_counts(now: datetime | None = None) -> dict[tuple[str, str], int]:
    """{(task name, state): results stored}, as a GROUP BY over the whole table would say."""
    now = now or timezone.now()
    oldest = TaskResult.objects.aggregate(oldest=Min("date_done"))["oldest"]
    if oldest is None:
        TaskResultTally.objects.all().delete()
        return {}
    first_hour = _floor_hour(oldest)
    settled_until = _floor_hour(now) - SETTLE
    TaskResultTally.objects.filter(hour__lte=first_hour).delete()
    last_tallied = TaskResultTally.objects.aggregate(last=Max("hour"))["last"]
    _tally(max(last_tallied + HOUR if last_tallied else first_hour, first_hour + HOUR), settled_until)

    counts: Counter[tuple[str, str]] = Counter()
    tallied = (
        TaskResultTally.objects.filter(hour__gt=first_hour, hour__lt=settled_until)
        .values("task_name", "status")
        .annotate(total=Sum("count"))
        .order_by()
    )
    for row in tallied:
        counts[(row["task_name"], row["status"])] += row["total"]
    live = (
        TaskResult.objects.filter(
            Q(date_done__lt=first_hour + HOUR) | Q(date_done__gte=max(settled_until, first_hour + HOUR))
        )
        .values("task_name", "status")
        .annotate(total=Count("pk"))
        .order_by()
    )
    for row in live:
        counts[(row["task_name"] or "", row["status"])] += row["total"]
    return dict(counts)
