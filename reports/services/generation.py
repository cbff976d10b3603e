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
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from core import dispatch
from core.base_task import Attempt
from core.errors import FieldErrors, TransientError
from orders.services import history
from reports.models import Report, ReportSlice
from reports.services import emails
from reports.services.figures import Figures, aggregate_figures
from reports.services.files import save_chart, save_csv
from reports.services.periods import slices

logger = logging.getLogger(__name__)

Kind = Report.Kind
Status = Report.Status
SliceStatus = ReportSlice.Status


# The time limits of the report's own steps (the tasks use these); a slice's are settings.
GENERATE_SOFT_TIME_LIMIT, GENERATE_TIME_LIMIT = 60, 90
FINISH_SOFT_TIME_LIMIT, FINISH_TIME_LIMIT = 300, 360
# A claim lasts this much longer than its task's hard time limit: once it expires,
# the task that held it is surely gone (killed, lost with its worker).
LEASE_MARGIN = timedelta(seconds=10)


class Stopped(Exception):
    """The report was cancelled or failed, or this task lost its claim: stop here and record nothing."""


def _lease_until(now: datetime, time_limit: float) -> datetime:
    return now + timedelta(seconds=time_limit) + LEASE_MARGIN


# --- Starting: claim the report, write its slices, send them as a chord ------------------------------------------


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
            _fail_locked(report, f"Its generation was started {report.attempts} times without finishing.")
            return None
        if fresh:
            ReportSlice.objects.filter(report=report).delete()
            report.slices_done, report.progress, report.error, report.started_at = 0, 0, "", now
            report.finish_attempts = 0
        report.status, report.task_id = Status.RUNNING, task_id
        report.lease_owner, report.lease_expires_at = task_id, _lease_until(now, GENERATE_TIME_LIMIT)
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
        Report.objects.filter(pk=report_id).update(chord_id=group_id or "")
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


# --- Failing -------------------------------------------------------------------------------------------------------


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


def _fail_locked(report: Report, error: str) -> None:
    report.status, report.error, report.finished_at = Status.FAILED, error, timezone.now()
    report.lease_owner, report.lease_expires_at = "", None
    report.save(update_fields=["status", "error", "finished_at", "lease_owner", "lease_expires_at"])
    logger.error("report %s failed: %s", report.pk, error)


# --- One slice -----------------------------------------------------------------------------------------------------


def run_slice(report_id: int, start: date, end: date, *, attempt: Attempt) -> str:
    """Claim one slice, aggregate it and record its figures on its row, all or nothing.

    At the soft time limit it records nothing, gives its claim back and raises
    TransientError so that the task is retried (on its last attempt the report
    fails instead). A cancelled report's slice stops at its next checkpoint.
    """
    task_id = attempt.task_id
    part = _claim_slice(report_id, start, task_id)
    if part is None:
        return "skipped"
    if part.attempts > settings.REPORT_MAX_ATTEMPTS:
        mark_failed(report_id, f"The slice {start} to {end} was started {part.attempts - 1} times without finishing.")
        return "failed"

    def checkpoint() -> None:
        _check_slice(part.pk, task_id)

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


def _claim_slice(report_id: int, start: date, task_id: str) -> ReportSlice | None:
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
            lease_expires_at=_lease_until(now, settings.REPORT_SLICE_TIME_LIMIT),
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        logger.info(
            "report %s: slice %s left alone by task %s (done, leased, or not running)", report_id, start, task_id
        )
        return None
    return ReportSlice.objects.get(report_id=report_id, period_start=start)


def _check_slice(slice_id: int, task_id: str) -> None:
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


# --- Finishing: merge the slice rows, write the files, mark the report done ---------------------------------------


def finish(report_id: int, *, task_id: str) -> str:
    """Finish a running report whose slices are all done: merge their rows, write the CSV and chart, mark it done.

    Idempotent: it claims the report first (a lease), so a second finish (the
    chord's body and the sweep, or a redelivery) finds it done, or leased, and
    leaves it. Reading the slice rows, it never depends on the chord's results.
    """
    if not _claim_finish(report_id, task_id):
        return "skipped"
    report = Report.objects.get(pk=report_id)
    if report.finish_attempts > settings.REPORT_MAX_ATTEMPTS:
        mark_failed(report_id, f"Its finish was started {report.finish_attempts - 1} times without finishing.")
        return "failed"
    try:
        _write_files_and_mark_done(report, task_id)
    except Stopped as exc:
        logger.info("report %s: finish by task %s stopped: %s", report_id, task_id, exc)
        return f"stopped: {exc}"
    return "done"


def _write_files_and_mark_done(report: Report, task_id: str) -> None:
    report_id = report.pk
    saved: list[str] = []
    with fail_report_on_error(report_id):
        try:
            partials = list(ReportSlice.objects.filter(report_id=report_id).values_list("figures", flat=True))
            figures = Figures.merge(partials)
            product_ids = {product_id for _, product_id in figures.lines}
            products = history.products_by_id(product_ids)
            summary = figures.summary(products, report.period_start, report.period_end)
            Report.objects.filter(pk=report_id).update(progress=96)
            stem = f"reports/{report.kind}-{report.period_start}-{report.period_end}-{report.pk}-{secrets.token_hex(4)}"
            saved.append(save_csv(f"{stem}.csv", figures, products))
            saved.append(save_chart(f"{stem}.png", figures, report))
            if not _mark_done(report_id, task_id, saved[0], saved[1], summary):
                raise Stopped("the report was cancelled or taken over while its files were written")
        except BaseException:
            for name in saved:  # never leave a half-finished set of files behind
                default_storage.delete(name)
            raise


def _claim_finish(report_id: int, task_id: str) -> bool:
    now = timezone.now()
    free = Q(lease_owner="") | Q(lease_owner=task_id) | Q(lease_expires_at__lt=now)
    claimed = (
        Report.objects.filter(pk=report_id, status=Status.RUNNING)
        .filter(free)
        .exclude(slices__status__in=[SliceStatus.PENDING, SliceStatus.RUNNING])
        .filter(slices_total__gt=0)
        .update(
            lease_owner=task_id,
            lease_expires_at=_lease_until(now, FINISH_TIME_LIMIT),
            finish_attempts=F("finish_attempts") + 1,
        )
    )
    if not claimed:
        logger.info("report %s: finish by task %s skipped (not running, slices left, or leased)", report_id, task_id)
    return bool(claimed)


def _mark_done(report_id: int, task_id: str, csv_name: str, chart_name: str, summary: dict) -> bool:
    with transaction.atomic():
        report = Report.objects.select_for_update().get(pk=report_id)
        if report.status != Status.RUNNING or report.lease_owner != task_id:
            return False
        old = [name for name in (report.csv_file.name, report.chart.name) if name]
        report.csv_file.name, report.chart.name = csv_name, chart_name
        report.summary = summary
        report.status, report.progress, report.error = Status.DONE, 100, ""
        report.finished_at = timezone.now()
        report.lease_owner, report.lease_expires_at = "", None
        report.save(
            update_fields=[
                "csv_file",
                "chart",
                "summary",
                "status",
                "progress",
                "error",
                "finished_at",
                "lease_owner",
                "lease_expires_at",
            ]
        )
        # Regenerating replaces the files: the old ones go once the new ones are committed.
        transaction.on_commit(lambda: [default_storage.delete(name) for name in old], robust=True)
    logger.info("report %s done: %s", report_id, csv_name)
    return True
