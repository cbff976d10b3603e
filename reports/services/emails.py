"""The "your report is ready" email to the staff member who asked for a report, through the notifications outbox."""

from __future__ import annotations

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from notifications.services import outbox
from reports.models import Report


def notify_report_ready(report_id: int) -> object | None:
    """Tell the staff member who asked for a report that it is ready, once per generation (the outbox's dedup key).

    Called by the task that finish_report links to: the email is a callback of
    the finished report, sent after it, never a step of finishing it.
    """
    report = Report.objects.select_related("requested_by").filter(pk=report_id).first()
    if report is None or report.status != Report.Status.DONE:
        return None  # a callback after a finish that was cancelled or failed
    user = report.requested_by
    if user is None or not user.email:
        return None
    context = {
        "report": report,
        "user": user,
        "report_url": settings.SITE_URL + reverse("reports:detail", args=[report.pk]),
    }
    return outbox.queue_email(
        kind=outbox.Kind.REPORT_READY,
        recipient=user.email,
        user_id=user.pk,
        subject=f"Your report is ready: {report}",
        body_text=render_to_string("reports/email/ready.txt", context),
        body_html=render_to_string("reports/email/ready.html", context),
        dedup_key=f"report:{report.pk}:ready:{report.finished_at.isoformat()}",
        subject_object=f"reports.report:{report.pk}",
    )
