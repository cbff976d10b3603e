"""Slice hooks for fault tests (REPORT_SLICE_TEST_HOOK in a worker's environment).

Each is called by a slice once it holds its claim, with (report_id, slice start,
attempt, checkpoint). They stand for a slice whose queries take long: they wait
in small steps and call checkpoint() between them, as the real slice does
between its queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date

from celery.exceptions import SoftTimeLimitExceeded

STEP = 0.1


def _work(seconds: float, checkpoint: Callable[[], None]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        checkpoint()
        time.sleep(STEP)


def slow_first_attempt(report_id: int, start: date, attempt: int, checkpoint: Callable[[], None]) -> None:
    """The first attempt of every slice takes a minute (long enough to be killed or hit a time limit); later ones are quick."""
    if attempt == 1:
        _work(60, checkpoint)


def slow_always(report_id: int, start: date, attempt: int, checkpoint: Callable[[], None]) -> None:
    """Every attempt takes ten minutes, checking in between (a slice to cancel)."""
    _work(600, checkpoint)


def deaf_to_soft_limit(report_id: int, start: date, attempt: int, checkpoint: Callable[[], None]) -> None:
    """Stuck where the soft time limit cannot stop it (as in a C call): only the hard limit ends it."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            time.sleep(STEP)
        except SoftTimeLimitExceeded:
            continue


def slow_after_the_first_slice(report_id: int, start: date, attempt: int, checkpoint: Callable[[], None]) -> None:
    """The first slice is quick; the others take eight seconds."""
    from reports.models import Report

    if start != Report.objects.get(pk=report_id).period_start:
        _work(8, checkpoint)
