"""Celery entry points for operations; each calls one service."""

from __future__ import annotations

from celery import shared_task

from ops import failures


@shared_task(name="ops.tasks.cleanup_failures", soft_time_limit=600, time_limit=660)
def cleanup_failures() -> int:
    """Delete recorded failures older than FAILURE_RETENTION."""
    return failures.cleanup()
