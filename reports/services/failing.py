"""What every step of a generation shares: how long its claim lasts, how it stops, and how the report fails.

A claim (a lease) runs past its task's hard time limit by LEASE_MARGIN, so an
expired one means its task is surely gone. A step that finds the report
cancelled or failed, or its claim taken, raises Stopped and records nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from core.errors import TransientError
from reports.models import Report

logger = logging.getLogger(__name__)

Status = Report.Status

# A claim lasts this much longer than its task's hard time limit: once it expires,
# the task that held it is surely gone (killed, lost with its worker).
LEASE_MARGIN = timedelta(seconds=10)


class Stopped(Exception):
    """The report was cancelled or failed, or this task lost its claim: stop here and record nothing."""


def lease_until(now: datetime, time_limit: float) -> datetime:
    return now + timedelta(seconds=time_limit) + LEASE_MARGIN


@contextmanager
def fail_report_on_error(report_id: int) -> Iterator[None]:
    """Mark the report failed with an unexpected error, then let it propagate to the task.

    A soft time limit and a stop are not failures: the caller re-queues or stops.
    """
    try:
        yield
    except (SoftTimeLimitExceeded, Stopped, TransientError):
        raise
    except Exception as exc:
        mark_failed(report_id, f"{type(exc).__name__}: {exc}")
        raise


def mark_failed(report_id: int, error: str) -> bool:
    """Fail a report that is still pending or running (a done or cancelled one stays as it is)."""
    failed = Report.objects.filter(pk=report_id, status__in=[Status.PENDING, Status.RUNNING]).update(
        status=Status.FAILED, error=error, finished_at=timezone.now(), lease_owner="", lease_expires_at=None
    )
    if failed:
        logger.error("report %s failed: %s", report_id, error)
    return bool(failed)


def fail_locked(report: Report, error: str) -> None:
    report.status, report.error, report.finished_at = Status.FAILED, error, timezone.now()
    report.lease_owner, report.lease_expires_at = "", None
    report.save(update_fields=["status", "error", "finished_at", "lease_owner", "lease_expires_at"])
    logger.error("report %s failed: %s", report.pk, error)
