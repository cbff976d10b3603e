"""Celery entry points for reports (all on low_priority); each calls one service."""

from __future__ import annotations

from datetime import date

from celery import Task, shared_task

from reports.models import Report
from reports.services import generation, requesting


@shared_task(
    bind=True, name="reports.tasks.generate_report", soft_time_limit=600, time_limit=660,
    subject=("reports.Report", "report_id"), retry_with="reports.services.requesting.retry_generation",
)  # fmt: skip
def generate_report(self: Task, report_id: int) -> str:
    """Generate a pending report: inline for one slice, a chord of slices for more."""
    return generation.generate_report(report_id, task_id=self.request.id)


@shared_task(
    bind=True, name="reports.tasks.aggregate_report_slice", soft_time_limit=300, time_limit=360,
    subject=("reports.Report", "report_id"),
)  # fmt: skip
def aggregate_report_slice(self: Task, report_id: int, start: str, end: str) -> dict:
    """One slice's partial aggregates, with progress reported as it finishes."""
    figures = generation.aggregate_slice(report_id, date.fromisoformat(start), date.fromisoformat(end))
    self.update_state(state="PROGRESS", meta={"report": report_id, "slice": [start, end]})
    return figures


@shared_task(
    name="reports.tasks.finish_report", soft_time_limit=300, time_limit=360, subject=("reports.Report", "report_id")
)
def finish_report(partials: list[dict], report_id: int) -> str:
    """The chord's callback: merge the slices, write the CSV and chart, mark the report done."""
    generation.finish(report_id, partials)
    return "done"


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
