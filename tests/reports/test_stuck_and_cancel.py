"""Reports never stay stuck, the admin's actions tell the truth, and a report can be cancelled (services, web, admin)."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.messages import get_messages
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from django_celery_results.models import ChordCounter

from core.errors import Refused
from ops import runs
from ops.models import TaskRun
from reports.models import Report, ReportSlice
from reports.services import cancelling, failing, figures, finishing, generation, requesting, slices, sweeps
from tests.factories import staff_with
from tests.reports.helpers import Sale, make_sales
from tests.support.broker import messages_in

pytestmark = pytest.mark.django_db


def tasks_sent(broker, name: str) -> list[list]:
    """The arguments of every waiting message of task `name`."""
    waiting = messages_in(broker, "low_priority")
    return [json.loads(message["headers"]["argsrepr"]) for message in waiting if message["headers"]["task"] == name]


def links_of(message: dict) -> list[str]:
    """The tasks a waiting message links to (its callbacks, in Celery's message body)."""
    _args, _kwargs, embed = json.loads(base64.b64decode(message["body"]))
    return [link["task"] for link in embed.get("callbacks") or []]


def stuck_pending_report(minutes_ago: int = 10) -> Report:
    """A report whose generate task was lost: saved, pending, its message gone (an emptied Redis)."""
    report = requesting.request_report(kind="custom", start=date(2025, 6, 1), end=date(2025, 6, 20), enqueue=False)
    Report.objects.filter(pk=report.pk).update(queued_at=timezone.now() - timedelta(minutes=minutes_ago))
    return Report.objects.get(pk=report.pk)


# --- 1. stuck reports ------------------------------------------------------------------------------------------------


def test_the_sweep_resends_a_report_whose_task_was_lost_while_pending(broker) -> None:
    report = stuck_pending_report()
    fresh = requesting.request_report(kind="custom", start=date(2025, 7, 1), end=date(2025, 7, 2), enqueue=False)

    assert sweeps.requeue_stuck_reports() == 1

    assert tasks_sent(broker, "reports.tasks.generate_report") == [[report.pk]]  # not the fresh one
    assert Report.objects.get(pk=fresh.pk).status == "pending"
    assert sweeps.requeue_stuck_reports() == 0  # re-sent once per REPORT_REQUEUE_AFTER, not every minute


def test_the_sweep_resends_a_report_whose_generate_task_was_lost_while_running(broker) -> None:
    report = stuck_pending_report()
    generation.start_generation(report.pk, task_id="lost-task")  # claimed, then the worker died
    Report.objects.filter(pk=report.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert sweeps.requeue_stuck_reports() == 1
    assert tasks_sent(broker, "reports.tasks.generate_report") == [[report.pk]]

    # Its replacement takes the expired lease over and resumes with the same slices.
    slices_before = list(ReportSlice.objects.filter(report=report).values_list("pk", flat=True))
    parts = generation.start_generation(report.pk, task_id="new-task")
    assert sorted(part.pk for part in parts) == sorted(slices_before)
    assert Report.objects.get(pk=report.pk).attempts == 2


def test_the_sweep_resends_slices_whose_lease_expired_and_fails_a_report_after_its_attempts(broker, settings) -> None:
    settings.REPORT_MAX_ATTEMPTS = 2
    report = stuck_pending_report()
    generation.start_generation(report.pk, task_id="gen")
    Report.objects.filter(pk=report.pk).update(lease_owner="", lease_expires_at=None)  # slices were sent
    first = ReportSlice.objects.filter(report=report).first()
    ReportSlice.objects.filter(report=report).update(sent_at=timezone.now())
    expired = timezone.now() - timedelta(seconds=1)
    ReportSlice.objects.filter(pk=first.pk).update(
        status="running", lease_owner="killed", lease_expires_at=expired, attempts=1
    )

    assert sweeps.requeue_stuck_reports() == 1
    [args] = tasks_sent(broker, "reports.tasks.aggregate_report_slice")
    assert args == [report.pk, str(first.period_start), str(first.period_end)]
    assert Report.objects.get(pk=report.pk).status == "running"

    ReportSlice.objects.filter(pk=first.pk).update(status="running", lease_expires_at=expired, attempts=2)
    sweeps.requeue_stuck_reports()
    report.refresh_from_db()
    assert report.status == "failed"
    assert f"slice {first.period_start} to {first.period_end} was started 2 times" in report.error


def test_the_sweep_finishes_a_report_whose_slices_are_all_done_but_nothing_finished_it(broker, settings) -> None:
    make_sales([Sale(datetime(2025, 6, 3, 12, tzinfo=ZoneInfo("UTC")), "completed", (("MUG", 2, 10),))])
    report = stuck_pending_report()
    generation.start_generation(report.pk, task_id="gen")
    Report.objects.filter(pk=report.pk).update(lease_owner="", lease_expires_at=None)
    for part in ReportSlice.objects.filter(report=report):
        ReportSlice.objects.filter(pk=part.pk).update(
            status="done",
            figures=figures.aggregate_figures(part.period_start, part.period_end),
            finished_at=timezone.now() - timedelta(minutes=5),
        )

    assert sweeps.requeue_stuck_reports() == 1
    [message] = [
        m for m in messages_in(broker, "low_priority") if m["headers"]["task"] == "reports.tasks.finish_report"
    ]
    # The sweep's finish carries the same link as the chord's body: the email follows it.
    assert links_of(message) == ["reports.tasks.notify_report_ready"]
    assert finishing.finish(report.pk, task_id="sweep-finish") == "done"
    assert finishing.finish(report.pk, task_id="chord-finish") == "skipped"  # idempotent
    report.refresh_from_db()
    assert (report.status, report.summary["revenue"]) == ("done", "20.00")


def test_regenerate_says_nothing_was_sent_for_a_report_still_pending(admin_client, broker) -> None:
    report = stuck_pending_report()

    response = admin_client.post(
        "/admin/reports/report/", {"action": "regenerate", "_selected_action": [report.pk]}, follow=True
    )

    shown = [str(message) for message in get_messages(response.wsgi_request)]
    assert not any("Regenerating" in text for text in shown), shown
    assert any("Nothing sent for 1 report(s) still pending or running" in text for text in shown), shown
    assert tasks_sent(broker, "reports.tasks.generate_report") == []


def test_retry_of_a_stuck_reports_task_is_refused_and_writes_no_audit_row(admin_user, broker) -> None:
    report = stuck_pending_report()

    with pytest.raises(runs.RetryRefused, match="nothing was sent"):
        runs.retry("reports.tasks.generate_report", "old-task", [report.pk], {}, "", user=admin_user)

    assert not TaskRun.objects.exists()
    assert tasks_sent(broker, "reports.tasks.generate_report") == []


# --- 4. cancelling ---------------------------------------------------------------------------------------------------


def test_cancelling_a_running_report_stops_its_slices_and_drops_its_files(
    broker, settings, tmp_path, django_capture_on_commit_callbacks
) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    make_sales([Sale(datetime(2025, 6, 3, 12, tzinfo=ZoneInfo("UTC")), "completed", (("MUG", 2, 10),))])
    done = generation.generate_report_inline(stuck_pending_report().pk)  # files of an earlier generation
    old_files = [done.csv_file.name, done.chart.name]
    assert requesting.regenerate(done.pk)
    parts = generation.start_generation(done.pk, task_id="gen")
    generation.send_slices(done.pk, parts, chord=True)
    running = parts[0]
    ReportSlice.objects.filter(pk=running.pk).update(status="running", lease_owner="slice-task")

    with django_capture_on_commit_callbacks(execute=True):
        report = cancelling.cancel_report(done.pk, actor_id=None)

    assert (report.status, report.csv_file.name, report.chart.name) == ("cancelled", "", "")
    assert not any(default_storage.exists(name) for name in old_files)
    with pytest.raises(failing.Stopped):  # the running slice stops at its next check
        slices.check_slice(running.pk, "slice-task")
    # A slice that was not started cannot claim its row any more, whatever the broker does.
    assert slices.claim_slice(done.pk, parts[1].period_start, "late-task") is None
    assert finishing.finish(done.pk, task_id="finish") == "skipped"
    with pytest.raises(Refused, match="only a pending or running report can be cancelled"):
        cancelling.cancel_report(done.pk)


def test_a_cancel_that_lands_while_the_chord_is_being_sent_calls_the_chord_off_too(broker, monkeypatch) -> None:
    report = stuck_pending_report()
    parts = generation.start_generation(report.pk, task_id="gen")
    sent: list[str] = []

    def send_then_cancel(*args, **kwargs) -> str | None:
        group_id = send_chord(*args, **kwargs)
        sent.append(group_id)
        cancelling.cancel_report(report.pk)  # staff cancel it before its chord id is saved
        return group_id

    send_chord = generation.dispatch.send_chord
    monkeypatch.setattr(generation.dispatch, "send_chord", send_then_cancel)
    generation.send_slices(report.pk, parts, chord=True)

    [group_id] = sent
    assert Report.objects.get(pk=report.pk).status == "cancelled"
    # Its counter is gone: the revoked slices can neither count down nor end it in a ChordError.
    assert not ChordCounter.objects.filter(group_id=group_id).exists()


def test_the_json_api_cancels_a_report_or_says_why_not(broker) -> None:
    report = stuck_pending_report()
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_with("reports.view_report", "reports.cancel_report"))
    client.get(f"/reports/{report.pk}/")  # the page with its Cancel form sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    refused = client.post(f"/api/reports/{report.pk}/cancel/")
    assert refused.status_code == 403  # no CSRF token

    response = client.post(f"/api/reports/{report.pk}/cancel/", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    again = client.post(f"/api/reports/{report.pk}/cancel/", HTTP_X_CSRFTOKEN=token)
    assert again.status_code == 409 and "cancelled" in again.json()["error"]
    assert client.post("/api/reports/999999/cancel/", HTTP_X_CSRFTOKEN=token).status_code == 404


def test_the_report_page_offers_cancel_to_those_allowed_and_it_posts_with_csrf(broker) -> None:
    report = stuck_pending_report()
    viewer = Client()
    viewer.force_login(staff_with("reports.view_report"))
    assert "Cancel this report" not in viewer.get(f"/reports/{report.pk}/").content.decode()
    assert viewer.post(f"/reports/{report.pk}/cancel/").status_code == 403

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_with("reports.view_report", "reports.cancel_report"))
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert "Cancel this report" in page and 'name="csrfmiddlewaretoken"' in page
    assert client.post(f"/reports/{report.pk}/cancel/").status_code == 403  # CSRF on
    token = client.cookies["csrftoken"].value
    response = client.post(f"/reports/{report.pk}/cancel/", {"csrfmiddlewaretoken": token}, follow=True)
    assert response.redirect_chain[-1][0] == f"/reports/{report.pk}/"
    assert "The report was cancelled" in response.content.decode()
    assert Report.objects.get(pk=report.pk).status == "cancelled"
    assert "Cancel this report" not in response.content.decode()


def test_the_admin_cancel_action_needs_its_own_permission(broker) -> None:
    report = stuck_pending_report()
    finance = Client()
    finance.force_login(staff_with("reports.view_report", "reports.change_report"))
    changelist = finance.get("/admin/reports/report/").content.decode()
    assert 'value="regenerate"' in changelist and 'value="cancel"' not in changelist

    allowed = Client()
    allowed.force_login(staff_with("reports.view_report", "reports.cancel_report"))
    response = allowed.post(
        "/admin/reports/report/", {"action": "cancel", "_selected_action": [report.pk]}, follow=True
    )
    assert "Cancelled 1 report(s)" in response.content.decode()
    report.refresh_from_db()
    assert report.status == "cancelled" and report.cancelled_by is not None


def test_the_staff_task_api_stops_a_running_slice_by_cancelling_its_report(admin_user, broker) -> None:
    from django_celery_results.models import TaskResult

    from ops import task_api

    report = stuck_pending_report()
    args = json.dumps(json.dumps([report.pk, "2025-06-01", "2025-06-07"]))  # as the result backend stores them
    TaskResult.objects.create(
        task_id="slice-1", task_name="reports.tasks.aggregate_report_slice", status="STARTED", task_args=args
    )

    stopped = task_api.stop("slice-1", user=admin_user)

    assert "reports.services.cancelling.cancel_report" in stopped.outcome
    report.refresh_from_db()
    assert (report.status, report.cancelled_by) == ("cancelled", admin_user)
