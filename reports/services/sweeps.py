"""The reports sweep (beat, every minute): nothing stays pending or running for ever.

Work that must not be lost is a row before it is a message (the report, its
slices), so the sweep reads the rows and:

- re-sends a pending report whose generate task never started (a broker outage,
  an emptied Redis) once it has waited REPORT_REQUEUE_AFTER;
- re-sends generate_report for a running report whose own lease expired before
  it wrote and sent its slices (the task was killed or lost with its worker);
- re-sends the slices nobody is working on: never sent, sent REPORT_REQUEUE_AFTER
  ago and never started, or claimed under a lease that expired (a worker lost, a
  hard time limit);
- finishes a report whose slices all finished REPORT_REQUEUE_AFTER ago when
  nothing finished it (the chord's callback was lost, or the slices were re-sent
  outside the chord).

A re-send is only a wake-up: every task claims its row, so a duplicate does
nothing. The bound is in the claims: a report, a slice or a finish started
REPORT_MAX_ATTEMPTS times without finishing fails the report, with the reason.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db.models import Max, Q
from django.utils import timezone

from core import dispatch
from reports.models import Report, ReportSlice
from reports.services import failing, generation

logger = logging.getLogger(__name__)

Status = Report.Status
SliceStatus = ReportSlice.Status

# Unfinished reports are few (a handful a day); this only bounds a pathological backlog.
SWEEP_BATCH_SIZE = 200


def requeue_stuck_reports() -> int:
    """Re-send what was lost and finish what was left; returns how many reports it acted on."""
    now = timezone.now()
    cutoff = now - settings.REPORT_REQUEUE_AFTER
    acted = _requeue_pending(now, cutoff)
    running = Report.objects.filter(status=Status.RUNNING).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    )
    for report in running.order_by("pk")[:SWEEP_BATCH_SIZE]:
        acted += _sweep_running(report, now, cutoff)
    if acted:
        logger.info("reports sweep acted on %s reports", acted)
    return acted


def _requeue_pending(now: datetime, cutoff: datetime) -> int:
    waiting = Report.objects.filter(status=Status.PENDING).filter(
        Q(queued_at__lt=cutoff) | Q(queued_at__isnull=True, created_at__lt=cutoff)
    )
    ids = list(waiting.order_by("pk").values_list("pk", flat=True)[:SWEEP_BATCH_SIZE])
    if ids:
        Report.objects.filter(pk__in=ids, status=Status.PENDING).update(queued_at=now)
    for report_id in ids:
        logger.warning("report %s waited since before %s without starting; the sweep re-sends it", report_id, cutoff)
        dispatch.send("reports.tasks.generate_report", [report_id])
    return len(ids)


def _sweep_running(report: Report, now: datetime, cutoff: datetime) -> int:
    slices = ReportSlice.objects.filter(report=report)
    if report.lease_expires_at is not None:
        # Its generate (or finish) task was lost while it held the report: start it again, resuming.
        if slices.exists() and not slices.exclude(status=SliceStatus.DONE).exists():
            return _finish(report, "its finish was lost")
        logger.warning("report %s: its task %s was lost; the sweep re-sends it", report.pk, report.lease_owner)
        dispatch.send("reports.tasks.generate_report", [report.pk])
        return 1
    lost = slices.filter(
        Q(status=SliceStatus.PENDING, sent_at__isnull=True)
        | Q(status=SliceStatus.PENDING, sent_at__lt=cutoff)
        | Q(status=SliceStatus.RUNNING, lease_expires_at__lt=now)
    )
    exhausted = lost.filter(attempts__gte=settings.REPORT_MAX_ATTEMPTS).first()
    if exhausted is not None:
        failing.mark_failed(
            report.pk,
            f"The slice {exhausted.period_start} to {exhausted.period_end} was started {exhausted.attempts} times "
            "without finishing (lost workers or time limits).",
        )
        return 1
    parts = list(lost)
    if parts:
        logger.warning(
            "report %s: %s slices were lost or never started; the sweep re-sends them", report.pk, len(parts)
        )
        generation.send_slices(report.pk, parts, chord=False)
        return 1
    if not slices.exists():  # left running by a version that kept no slice rows
        failing.mark_failed(report.pk, "It was interrupted and has no slices to resume; generate it again.")
        return 1
    if slices.exclude(status=SliceStatus.DONE).exists():
        return 0  # slices at work under live leases
    last = slices.aggregate(last=Max("finished_at"))["last"]
    if last is not None and last < cutoff:
        return _finish(report, "nothing finished it after its slices")
    return 0


def _finish(report: Report, why: str) -> int:
    if report.finish_attempts >= settings.REPORT_MAX_ATTEMPTS:
        failing.mark_failed(report.pk, f"Its finish was started {report.finish_attempts} times without finishing.")
        return 1
    logger.warning("report %s: %s; the sweep finishes it", report.pk, why)
    dispatch.send_signature(generation.finish_signature(report.pk), [None], about=f"report {report.pk}'s finish")
    return 1
