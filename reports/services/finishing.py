"""Finishing a report: merge its slice rows, write the CSV and the chart, mark it done.

Finishing reads the slice rows, not the chord's results: it is idempotent and
never depends on django-celery-results' chord counter being exact (a slice that
completes twice breaks that counter). It claims the report first, so the chord's
body, the sweep and a redelivery cannot finish it twice.
"""

from __future__ import annotations

import logging
import secrets

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from orders.services import history
from reports.models import Report, ReportSlice
from reports.services.failing import Stopped, fail_report_on_error, lease_until, mark_failed
from reports.services.figures import Figures
from reports.services.files import save_chart, save_csv

logger = logging.getLogger(__name__)

Status = Report.Status
SliceStatus = ReportSlice.Status

# The finish's time limits (the task uses these).
FINISH_SOFT_TIME_LIMIT, FINISH_TIME_LIMIT = 300, 360


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
            lease_expires_at=lease_until(now, FINISH_TIME_LIMIT),
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
