"""Cancelling a report that is pending or running: it ends "cancelled", with no files.

The state is in the database, so it survives any restart: the report row says
cancelled, and every slice checks it before each query and before it records
anything (the spirit of Celery's AbortableTask, with the flag on our own row).
Slices that have not started are also revoked, which workers remember across
restarts (CELERY_WORKER_STATE_DB); a revoke that does not arrive changes
nothing, since a slice of a cancelled report cannot claim its row.
"""

from __future__ import annotations

import logging

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from core import dispatch
from core.errors import Refused
from reports.models import Report, ReportSlice

logger = logging.getLogger(__name__)

Status = Report.Status


def cancel_report(report_id: int, *, actor_id: int | None = None) -> Report:
    """Cancel a pending or running report: stop its slices, revoke the unstarted ones, drop its files. Refused otherwise."""
    with transaction.atomic():
        report = Report.objects.select_for_update().filter(pk=report_id).first()
        if report is None:
            raise Refused(f"report {report_id} does not exist")
        if report.status not in (Status.PENDING, Status.RUNNING):
            raise Refused(
                f"{report} is {report.get_status_display().lower()}; only a pending or running report can be cancelled."
            )
        files = [name for name in (report.csv_file.name, report.chart.name) if name]
        unstarted = list(
            ReportSlice.objects.filter(report=report)
            .exclude(status=ReportSlice.Status.DONE)
            .exclude(task_id="")
            .values_list("task_id", flat=True)
        )
        task_ids = [*unstarted, *([report.task_id] if report.task_id else [])]
        report.status, report.finished_at, report.cancelled_by_id = Status.CANCELLED, timezone.now(), actor_id
        report.lease_owner, report.lease_expires_at = "", None
        report.csv_file.name = report.chart.name = ""
        report.summary = {}
        report.save(
            update_fields=[
                "status",
                "finished_at",
                "cancelled_by",
                "lease_owner",
                "lease_expires_at",
                "csv_file",
                "chart",
                "summary",
            ]
        )
        # A cancelled report keeps no files: those of an earlier generation go too, once the cancel is committed.
        transaction.on_commit(lambda: [default_storage.delete(name) for name in files], robust=True)
        if report.chord_id:  # its revoked slices must not end the chord in an error of finish_report
            transaction.on_commit(lambda: dispatch.forget_chord(report.chord_id), robust=True)
        transaction.on_commit(
            lambda: dispatch.revoke(task_ids, about=f"report {report_id}'s {len(task_ids)} tasks"), robust=True
        )
    logger.info("report %s cancelled by user %s; %s tasks revoked", report_id, actor_id, len(task_ids))
    return report
