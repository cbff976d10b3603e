"""Generating a report: figures aggregated in the database, slice by slice, merged, then marked done.

A report's period is split into slices of REPORT_SLICE_DAYS, each a ReportSlice
row. generate_report claims the report (a lease), writes the slice rows and sends
them as a Celery chord: the slices aggregate in parallel (each one a pair of GROUP
BY queries, never a loop over orders) and record their partial figures on their
own row; the chord's body, finish_report, merges the rows, streams the CSV to
storage, draws the chart and marks the report done, and its `link` then emails
whoever asked for it. Nothing is marked done until both files are complete.

Every step claims its work with a lease (the task id and an expiry past the
task's hard time limit), so a redelivery resumes its own claim and a lost task
is what an expired lease means. Finishing reads the slice rows, not the chord's
results: it is idempotent and never depends on django-celery-results' chord
counter being exact (a slice that completes twice breaks that counter). The sweep
(reports.services.sweeps) re-sends what was lost and finishes what the chord did
not, and a report started REPORT_MAX_ATTEMPTS times without finishing fails.

A slice stops at its soft time limit without recording anything and is re-queued;
a cancelled report's running slices stop at their next checkpoint.

This module starts a report (claim it, write its slice rows, send them as a
chord) and generates one inline; reports.services.slices runs one slice,
reports.services.finishing merges the rows and writes the files, and
reports.services.failing holds what they share: the claim's expiry, Stopped, and
failing the report.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core import dispatch
from core.base_task import Attempt
from core.errors import FieldErrors
from reports.models import Report, ReportSlice
from reports.services import emails
from reports.services.failing import fail_locked, fail_report_on_error, lease_until
from reports.services.finishing import finish
from reports.services.periods import slices
from reports.services.slices import run_slice

logger = logging.getLogger(__name__)

Status = Report.Status
SliceStatus = ReportSlice.Status


# The time limits of the report's start (the task uses these); the finish's are in finishing, a slice's are settings.
GENERATE_SOFT_TIME_LIMIT, GENERATE_TIME_LIMIT = 60, 90


def start_generation(report_id: int, *, task_id: str) -> list[ReportSlice] | None:
    """Claim the report and return its unfinished slices; None if it is not ours to start.

    A pending report is claimed fresh (its old slices go); a running one only by
    a redelivery of the task that holds it, or once its lease has expired.
    """
    now = timezone.now()
    with transaction.atomic():
        report = Report.objects.select_for_update().filter(pk=report_id).first()
        if report is None:
            logger.info("report %s does not exist; task %s leaves it", report_id, task_id)
            return None
        fresh = report.status == Status.PENDING
        ours = report.status == Status.RUNNING and report.lease_owner == task_id
        expired = (
            report.status == Status.RUNNING and report.lease_expires_at is not None and report.lease_expires_at < now
        )
        if not (fresh or ours or expired):
            logger.info(
                "report %s is %s and not leased to task %s; it leaves it alone", report_id, report.status, task_id
            )
            return None
        if report.attempts >= settings.REPORT_MAX_ATTEMPTS:
            fail_locked(report, f"Its generation was started {report.attempts} times without finishing.")
            return None
        if fresh:
            ReportSlice.objects.filter(report=report).delete()
            report.slices_done, report.progress, report.error, report.started_at = 0, 0, "", now
            report.finish_attempts = 0
        report.status, report.task_id = Status.RUNNING, task_id
        report.lease_owner, report.lease_expires_at = task_id, lease_until(now, GENERATE_TIME_LIMIT)
        report.attempts += 1
        if not report.slices.exists():
            parts = slices(report.period_start, report.period_end, settings.REPORT_SLICE_DAYS)
            ReportSlice.objects.bulk_create(
                ReportSlice(report=report, period_start=first, period_end=last) for first, last in parts
            )
            report.slices_total, report.progress = len(parts), 5
        report.save()
        return list(_unfinished(report.pk, now))


def _unfinished(report_id: int, now: datetime) -> Any:
    """Slices nobody is working on: pending, or running under an expired lease."""
    return ReportSlice.objects.filter(report_id=report_id).filter(
        Q(status=SliceStatus.PENDING) | Q(status=SliceStatus.RUNNING, lease_expires_at__lt=now)
    )


def generate_report(report_id: int, *, task_id: str) -> str:
    """Start a pending report: send its slices as a chord whose body finishes it."""
    parts = start_generation(report_id, task_id=task_id)
    if parts is None:
        return "skipped"
    with fail_report_on_error(report_id):
        outcome = send_slices(report_id, parts, chord=True)
    Report.objects.filter(pk=report_id, lease_owner=task_id).update(lease_owner="", lease_expires_at=None)
    return outcome


def finish_signature(report_id: int) -> Any:
    """finish_report for the report, linked to the "your report is ready" email: a callback, not a checkpoint."""
    finish = dispatch.signature("reports.tasks.finish_report", [report_id])
    finish.link(dispatch.signature("reports.tasks.notify_report_ready", [report_id], immutable=True))
    return finish


def send_slices(report_id: int, parts: list[ReportSlice], *, chord: bool) -> str:
    """Send the slices (a chord with finish_report as its body, or alone); record their task ids first.

    When the broker cannot take them, they stay unsent and the sweep sends them.
    With no slice left to run, the report is finished instead.
    """
    if not parts:
        if not ReportSlice.objects.filter(report_id=report_id).exclude(status=SliceStatus.DONE).exists():
            sent = dispatch.send_signature(finish_signature(report_id), [None], about=f"report {report_id}'s finish")
            return "finish sent" if sent else "broker unavailable; the sweep finishes it"
        return "nothing to send"
    now = timezone.now()
    signatures = []
    for part in parts:
        part.task_id = str(uuid.uuid4())
        ReportSlice.objects.filter(pk=part.pk).update(task_id=part.task_id, sent_at=now)
        args = [report_id, part.period_start.isoformat(), part.period_end.isoformat()]
        signatures.append(dispatch.signature("reports.tasks.aggregate_report_slice", args).set(task_id=part.task_id))
    about = f"report {report_id}'s {len(parts)} slices"
    if chord:
        group_id = dispatch.send_chord(signatures, finish_signature(report_id), about=about)
        sent = group_id is not None
        # A cancel reads chord_id, under the report's row lock, to call the chord off. One
        # that came after the send but before this save found none; this UPDATE waits for
        # its lock and then matches nothing, and the chord is called off here instead.
        kept = Report.objects.filter(pk=report_id, status=Status.RUNNING).update(chord_id=group_id or "")
        if sent and not kept:
            dispatch.forget_chord(group_id)
    else:
        sent = dispatch.send_group(signatures, about=about)
    if not sent:
        ReportSlice.objects.filter(pk__in=[part.pk for part in parts]).update(sent_at=None)
        return "broker unavailable; the sweep sends the slices"
    return f"{'chord' if chord else 'group'} of {len(parts)} slices"


def generate_report_inline(report_id: int) -> Report:
    """Generate without any worker, slice after slice (manage.py generate_report --sync)."""
    task_id = f"sync-{secrets.token_hex(8)}"
    parts = start_generation(report_id, task_id=task_id)
    if parts is None:
        raise FieldErrors({"report": ["The report is being generated by a worker already."]})
    for part in parts:
        run_slice(report_id, part.period_start, part.period_end, attempt=Attempt(task_id=task_id, is_last=True))
    report = Report.objects.get(pk=report_id)
    if report.status == Status.RUNNING:
        Report.objects.filter(pk=report_id, lease_owner=task_id).update(lease_owner="", lease_expires_at=None)
        finish(report_id, task_id=task_id)
        emails.notify_report_ready(report_id)
    return Report.objects.get(pk=report_id)
