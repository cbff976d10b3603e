"""Retry timing shared by tasks that compute their own countdown."""

from __future__ import annotations

from celery import Task
from celery.utils.time import get_exponential_backoff_interval


def retry_countdown(task: Task) -> int:
    """Seconds until the next retry: exponential backoff with full jitter, from the task's decorator options.

    Uses the task's retry_backoff (base seconds), retry_backoff_max and
    retry_jitter, exactly as Celery's autoretry would, but gives the number to the
    caller first, so the work's lease can be held for that long.
    """
    return get_exponential_backoff_interval(
        factor=int(task.retry_backoff),
        retries=task.request.retries,
        maximum=task.retry_backoff_max,
        full_jitter=task.retry_jitter,
    )
