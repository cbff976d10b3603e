"""Fixed-window request limits shared by every web process on every machine, kept in the database.

A limit must count requests across all gunicorn workers, and the project runs with
no cache server by default. Django's database cache is shared, but its incr() is a
read then a write, so simultaneous requests count once between them (which is why
django-ratelimit refuses it). Here each hit is one conditional UPDATE, the same
claim pattern the pipeline uses: it counts exactly under concurrency, on PostgreSQL
and on SQLite.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Throttle

# Counters are kept at least this long after their window began, then deleted.
FORGET_AFTER = timedelta(days=1)


def hit(key: str, limit: int, period: timedelta) -> bool:
    """Count one request against `key`; False when `limit` requests were counted in the current window already."""
    now = timezone.now()
    counters = Throttle.objects.filter(key=key)
    for _ in range(2):
        # Still inside the window and under the limit: count it.
        if counters.filter(window_start__gt=now - period, hits__lt=limit).update(hits=F("hits") + 1):
            return True
        # The window is over: this request opens the next one.
        if counters.filter(window_start__lte=now - period).update(window_start=now, hits=1):
            return True
        try:
            with transaction.atomic():
                # A key seen for the first time: a good moment to forget the long-finished windows.
                Throttle.objects.filter(window_start__lt=now - max(period, FORGET_AFTER)).delete()
                Throttle.objects.create(key=key, window_start=now, hits=1)
            return True
        except IntegrityError:
            continue  # another process created it just now: count against that row
    return False
