"""One slice of a report: claim it, aggregate its period, record its figures on its row, all or nothing.

A slice holds its row's claim (a lease past the slice's hard time limit) and
checks it between queries, so a cancelled report's running slices stop at their
next checkpoint. At its soft time limit a slice records nothing, gives its claim
back and is re-queued.
"""

from __future__ import annotations

import logging
from datetime import date

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from core.base_task import Attempt
from core.errors import TransientError
from reports.models import Report, ReportSlice
from reports.services.failing import Stopped, fail_report_on_error, lease_until, mark_failed
from reports.services.figures import aggregate_figures

logger = logging.getLogger(__name__)

Status = Report.Status
SliceStatus = ReportSlice.Status


def run_slice(report_id: int, start: date, end: date, *, attempt: Attempt) -> str:
    """Claim one slice, aggregate it and record its figures on its row, all or nothing.

    At the soft time limit it records nothing, gives its claim back and raises
    TransientError so that the task is retried (on its last attempt the report
    fails instead). A cancelled report's slice stops at its next checkpoint.
    """
    task_id = attempt.task_id
    part = claim_slice(report_id, start, task_id)
    if part is None:
        return "skipped"
    if part.attempts > settings.REPORT_MAX_ATTEMPTS:
        mark_failed(report_id, f"The slice {start} to {end} was started {part.attempts - 1} times without finishing.")
        return "failed"

    def checkpoint() -> None:
        check_slice(part.pk, task_id)

    try:
        with fail_report_on_error(report_id):
            if settings.REPORT_SLICE_TEST_HOOK:
                import_string(settings.REPORT_SLICE_TEST_HOOK)(report_id, start, part.attempts, checkpoint)
            figures = aggregate_figures(start, end, checkpoint)
            _record_slice(part, task_id, figures)
    except SoftTimeLimitExceeded:
        note = f"Stopped at its soft time limit ({settings.REPORT_SLICE_SOFT_TIME_LIMIT} s), nothing recorded."
        _release_slice(part.pk, task_id, note)
        if attempt.is_last:
            mark_failed(report_id, f"The slice {start} to {end} kept reaching its soft time limit.")
            return "failed"
        logger.warning("report %s: slice %s %s; task %s re-queues it", report_id, start, note, task_id)
        raise TransientError(f"slice {start} of report {report_id}: {note}") from None
    except Stopped as exc:
        _release_slice(part.pk, task_id, f"Stopped: {exc}.")
        logger.info("report %s: slice %s stopped (task %s): %s", report_id, start, task_id, exc)
        return f"stopped: {exc}"
    return "done"


def claim_slice(report_id: int, start: date, task_id: str) -> ReportSlice | None:
    now = timezone.now()
    claimable = Q(status=SliceStatus.PENDING) | Q(status=SliceStatus.RUNNING) & (
        Q(lease_owner=task_id) | Q(lease_expires_at__lt=now)
    )
    claimed = (
        ReportSlice.objects.filter(report_id=report_id, period_start=start, report__status=Status.RUNNING)
        .filter(claimable)
        .update(
            status=SliceStatus.RUNNING,
            lease_owner=task_id,
            lease_expires_at=lease_until(now, settings.REPORT_SLICE_TIME_LIMIT),
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        logger.info(
            "report %s: slice %s left alone by task %s (done, leased, or not running)", report_id, start, task_id
        )
        return None
    return ReportSlice.objects.get(report_id=report_id, period_start=start)


def check_slice(slice_id: int, task_id: str) -> None:
    """Stop (raise Stopped) unless the report is still running and this task still holds the slice."""
    ours = ReportSlice.objects.filter(
        pk=slice_id, status=SliceStatus.RUNNING, lease_owner=task_id, report__status=Status.RUNNING
    )
    if not ours.exists():
        raise Stopped("the report is no longer running, or the slice went to another task")


def _release_slice(slice_id: int, task_id: str, note: str) -> None:
    """Give the claim back; its retry is on its way, so the sweep waits REPORT_REQUEUE_AFTER from now."""
    ReportSlice.objects.filter(pk=slice_id, status=SliceStatus.RUNNING, lease_owner=task_id).update(
        status=SliceStatus.PENDING, lease_owner="", lease_expires_at=None, last_error=note, sent_at=timezone.now()
    )


def _record_slice(part: ReportSlice, task_id: str, figures: dict) -> None:
    """Record the slice's figures and count it in the report's progress, in one transaction, once."""
    with transaction.atomic():
        report = Report.objects.select_for_update().get(pk=part.report_id)
        if report.status != Status.RUNNING:
            raise Stopped(f"the report is {report.status}")
        recorded = ReportSlice.objects.filter(pk=part.pk, status=SliceStatus.RUNNING, lease_owner=task_id).update(
            status=SliceStatus.DONE, figures=figures, finished_at=timezone.now(), lease_expires_at=None, last_error=""
        )
        if not recorded:
            raise Stopped("the slice went to another task")
        done = ReportSlice.objects.filter(report_id=report.pk, status=SliceStatus.DONE).count()
        progress = min(95, 5 + done * 85 // max(report.slices_total, 1))
        Report.objects.filter(pk=report.pk).update(slices_done=done, progress=max(report.progress, progress))
