"""Asking for a report: create it (or find the scheduled one for its period) and generate it after the commit."""

from __future__ import annotations

from datetime import date

from django.db import IntegrityError, transaction
from django.utils import timezone

from core import dispatch
from core.errors import FieldErrors, Refused
from reports.models import Report
from reports.services.periods import period_containing, previous_period, validate_period

Kind = Report.Kind
Status = Report.Status


def request_report(
    *,
    kind: str,
    start: date,
    end: date,
    requested_by_id: int | None = None,
    regenerate: bool = False,
    enqueue: bool = True,
) -> Report:
    """Create the report for a period (or find the scheduled one) and generate it after commit.

    A scheduled period has one report: asking again returns it, and only a failed
    one (or `regenerate=True`) is generated again, replacing its files.
    """
    validate_period(start, end)
    with transaction.atomic():
        if kind == Kind.CUSTOM:
            report = Report.objects.create(
                kind=kind, period_start=start, period_end=end, requested_by_id=requested_by_id
            )
            created = True
        else:
            if (start, end) != period_containing(kind, start):
                raise FieldErrors({"start": [f"{start}–{end} is not a {kind} period."]})
            try:
                with transaction.atomic():
                    report, created = Report.objects.get_or_create(
                        kind=kind, period_start=start, period_end=end, defaults={"requested_by_id": requested_by_id}
                    )
            except IntegrityError:  # created concurrently
                report, created = Report.objects.get(kind=kind, period_start=start, period_end=end), False
            report = Report.objects.select_for_update().get(pk=report.pk)
        if not created:
            busy = report.status in (Status.PENDING, Status.RUNNING)
            if busy or (report.status == Status.DONE and not regenerate):
                return report
            _make_pending(report, requested_by_id)
        else:
            Report.objects.filter(pk=report.pk).update(queued_at=timezone.now())
        if enqueue:
            dispatch.send_on_commit("reports.tasks.generate_report", [report.pk])
    return report


def _make_pending(report: Report, requested_by_id: int | None) -> None:
    """Back to pending for a new generation: its claims start again from zero."""
    report.status, report.progress, report.error = Status.PENDING, 0, ""
    report.attempts = report.finish_attempts = 0
    report.lease_owner, report.lease_expires_at = "", None
    report.queued_at, report.cancelled_by = timezone.now(), None
    if requested_by_id:
        report.requested_by_id = requested_by_id
    report.save(
        update_fields=[
            "status",
            "progress",
            "error",
            "attempts",
            "finish_attempts",
            "lease_owner",
            "lease_expires_at",
            "queued_at",
            "cancelled_by",
            "requested_by",
        ]
    )


def schedule_report(kind: str, *, today: date | None = None) -> Report:
    """The beat entry point: the report for the previous day, week or month (idempotent per period)."""
    start, end = previous_period(kind, today or timezone.localdate())
    return request_report(kind=kind, start=start, end=end)


def regenerate(report_id: int, *, requested_by_id: int | None = None, task_id: str | None = None) -> bool:
    """Generate a finished report again, replacing its files (admin action, Retry).

    True when it was made pending and its task is sent after the commit; False
    for a report still pending or running, which is left alone (cancel it first,
    or let the sweep re-send it).
    """
    with transaction.atomic():
        report = Report.objects.select_for_update().get(pk=report_id)
        if report.status in (Status.PENDING, Status.RUNNING):
            return False
        _make_pending(report, requested_by_id)
        dispatch.send_on_commit("reports.tasks.generate_report", [report.pk], task_id=task_id)
    return True


def retry_generation(report_id: int, *, actor_id: int | None, task_id: str) -> None:
    """Retry a generate_report task from its result (ops' "Retry"): generate the report again, or refuse."""
    report = Report.objects.filter(pk=report_id).first()
    if report is None:
        raise Refused(f"report {report_id} does not exist")
    if not regenerate(report.pk, requested_by_id=actor_id, task_id=task_id):
        raise Refused(
            f"{report} is {report.status}: nothing was sent (cancel it first, or the sweep re-sends it if it is stuck)"
        )
