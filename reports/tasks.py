"""Celery entry points for reports (all on low_priority); each calls one service."""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any

from celery import shared_task, signals
from django.conf import settings

from core.base_task import ProjectTask
from reports.models import Report
from reports.services import emails, files, finishing, generation, requesting, slices, sweeps

SUBJECT = ("reports.Report", "report_id")
CANCEL = "reports.services.cancelling.cancel_report"

logger = logging.getLogger(__name__)


def takes_reports(queues: object) -> bool:
    """Whether a worker consuming these queues (names) runs the report tasks."""
    return settings.CELERY_TASK_ROUTES["reports.tasks.*"]["queue"] in queues


@signals.worker_init.connect(dispatch_uid="reports.tasks.load_chart_library")
def load_chart_library(sender: Any = None, **kwargs: Any) -> None:
    """A worker that runs reports imports matplotlib as it starts, not in its first report's finish.

    py-spy on a report's finish_report put 84% of it in that import (about 0.5 s, in
    every new pool child). Here it happens once, in the main process before the
    prefork pool forks, so the children share it. Workers for other queues skip it.
    """
    if sender is not None and takes_reports(sender.app.amqp.queues.consume_from):
        started = time.perf_counter()
        files.load_chart_library()
        logger.info("chart library loaded for reports in %.2f s", time.perf_counter() - started)


@shared_task(
    bind=True,
    name="reports.tasks.generate_report",
    soft_time_limit=generation.GENERATE_SOFT_TIME_LIMIT,
    time_limit=generation.GENERATE_TIME_LIMIT,
    subject=SUBJECT,
    retry_with="reports.services.requesting.retry_generation",
    cancel_with=CANCEL,
)
def generate_report(self: ProjectTask, report_id: int) -> str:
    """Claim a pending report and send its slices as a chord whose body finishes it."""
    return generation.generate_report(report_id, task_id=self.request.id)


@shared_task(
    bind=True,
    name="reports.tasks.aggregate_report_slice",
    soft_time_limit=settings.REPORT_SLICE_SOFT_TIME_LIMIT,
    time_limit=settings.REPORT_SLICE_TIME_LIMIT,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    subject=SUBJECT,
    cancel_with=CANCEL,
)
def aggregate_report_slice(self: ProjectTask, report_id: int, start: str, end: str) -> dict:
    """Aggregate one slice onto its row; re-queued at its soft time limit, stopped when the report is cancelled."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    outcome = self.call_service(slices.run_slice, report_id, first, last)
    self.update_state(state="PROGRESS", meta={"report": report_id, "slice": [start, end]})
    # The figures are on the slice's row; the chord's results only say what happened.
    return {"slice": [start, end], "outcome": outcome}


@shared_task(
    bind=True,
    name="reports.tasks.finish_report",
    soft_time_limit=finishing.FINISH_SOFT_TIME_LIMIT,
    time_limit=finishing.FINISH_TIME_LIMIT,
    subject=SUBJECT,
    cancel_with=CANCEL,
)
def finish_report(self: ProjectTask, _results: object, report_id: int) -> str:
    """The chord's body (or the sweep's): merge the slice rows, write the CSV and chart, mark the report done."""
    return finishing.finish(report_id, task_id=self.request.id)


@shared_task(name="reports.tasks.notify_report_ready", soft_time_limit=30, time_limit=60, subject=SUBJECT)
def notify_report_ready(report_id: int) -> str:
    """finish_report's link: email whoever asked for the report a link to it (once, through the outbox)."""
    return "queued" if emails.notify_report_ready(report_id) is not None else "nobody to tell"


@shared_task(name="reports.tasks.check_stuck_reports", soft_time_limit=50, time_limit=60)
def check_stuck_reports() -> int:
    """Re-send reports and slices whose task was lost, finish the ones the chord left, fail the hopeless."""
    return sweeps.requeue_stuck_reports()


@shared_task(name="reports.tasks.generate_daily_report", soft_time_limit=60, time_limit=90)
def generate_daily_report() -> int:
    """Yesterday's report (beat, 00:05 in TIME_ZONE); idempotent for its day."""
    return requesting.schedule_report(Report.Kind.DAILY).pk


@shared_task(name="reports.tasks.generate_weekly_report", soft_time_limit=60, time_limit=90)
def generate_weekly_report() -> int:
    """Last ISO week's report (beat, Monday 00:10); idempotent for its week."""
    return requesting.schedule_report(Report.Kind.WEEKLY).pk


@shared_task(name="reports.tasks.generate_monthly_report", soft_time_limit=60, time_limit=90)
def generate_monthly_report() -> int:
    """Last month's report (beat, the 1st at 00:15); idempotent for its month."""
    return requesting.schedule_report(Report.Kind.MONTHLY).pk
