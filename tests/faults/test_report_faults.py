"""Reports under faults, on real prefork workers: killed mid-slice, time limits, cancel, and the email that follows.

A slow slice comes from a test hook (REPORT_SLICE_TEST_HOOK, tests/reports/hooks.py)
that the worker calls once a slice holds its claim. Each test checks the figures
against an independent calculation, so a slice counted twice or lost shows.
"""

from __future__ import annotations

import os
import signal
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django_celery_results.models import ChordCounter, TaskResult

from notifications.models import Notification
from ops.models import Failure
from reports.models import Report, ReportSlice
from reports.services import generation, requesting, sweeps
from tests.factories import staff_with
from tests.reports.helpers import Sale, expected_figures, make_sales
from tests.support.broker import wait_until_idle
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

UTC = ZoneInfo("UTC")
START, END = date(2025, 5, 1), date(2025, 5, 12)
SALES = [
    Sale(datetime(2025, 5, day, 12, tzinfo=UTC), "completed", (("MUG", day % 3 + 1, 10), ("TEE", 1, 25)))
    for day in range(1, 13)
] + [Sale(datetime(2025, 5, 4, 9, tzinfo=UTC), "cancelled", (("MUG", 50, 10),))]
HOOKS = "tests.reports.hooks."


def request(**extra: object) -> Report:
    return requesting.request_report(kind="custom", start=START, end=END, **extra)


def assert_figures_once(report: Report) -> None:
    """Done, with the figures of an independent calculation, every slice recorded exactly once."""
    report.refresh_from_db()
    assert report.status == "done", report.error
    want = expected_figures(SALES, START, END, "UTC")
    assert (report.summary["revenue"], report.summary["order_count"]) == (want["revenue"], want["order_count"])
    assert report.slices_done == report.slices_total == ReportSlice.objects.filter(report=report, status="done").count()
    assert report.csv_file and report.chart


def running_first_attempts(report: Report, count: int) -> bool:
    return ReportSlice.objects.filter(report=report, status="running", attempts=1).count() == count


def sweeping_until_final(report: Report, settings, timeout: float) -> Report:
    """Run the sweep (what beat does every minute) until the report is final."""
    settings.REPORT_REQUEUE_AFTER = timedelta(seconds=1)

    def final() -> bool:
        sweeps.requeue_stuck_reports()
        return Report.objects.get(pk=report.pk).is_final

    wait_for(final, timeout, 1.0, f"report {report.pk} to end")
    return Report.objects.get(pk=report.pk)


def test_a_worker_child_killed_mid_slice_is_retried_and_the_figures_count_once(start_worker_process) -> None:
    make_sales(SALES)
    worker = start_worker_process(REPORT_SLICE_DAYS="6", REPORT_SLICE_TEST_HOOK=HOOKS + "slow_first_attempt")
    report = request()
    wait_for(lambda: running_first_attempts(report, 2), 60, 0.1, "both slices to be mid-way")

    for pid in worker.child_pids():
        os.kill(pid, signal.SIGKILL)

    wait_for(lambda: Report.objects.get(pk=report.pk).is_final, 90, 0.2, "the report to end")
    assert_figures_once(report)
    assert sorted(ReportSlice.objects.filter(report=report).values_list("attempts", flat=True)) == [2, 2]


def test_a_whole_worker_killed_mid_slice_leaves_the_report_to_the_sweep(start_worker_process, settings) -> None:
    """Its messages stay unacknowledged in Redis for the visibility timeout (2 h), and its chord never completes."""
    make_sales(SALES)
    env = {"REPORT_SLICE_DAYS": "6", "REPORT_SLICE_TEST_HOOK": HOOKS + "slow_first_attempt"}
    # A slice's claim lasts its hard time limit (here 10 s) and 10 s more.
    first = start_worker_process(REPORT_SLICE_SOFT_TIME_LIMIT="5", **env)
    staff = staff_with("reports.view_report")
    report = request(requested_by_id=staff.pk)
    wait_for(lambda: running_first_attempts(report, 2), 60, 0.1, "both slices to be mid-way")

    first.kill_group()
    start_worker_process(REPORT_SLICE_SOFT_TIME_LIMIT="5", **env)

    report = sweeping_until_final(report, settings, 120)
    assert_figures_once(report)
    # Finished by the sweep (the chord's body never ran), with the same link: the email once.
    wait_for(lambda: Notification.objects.filter(kind="report_ready").exists(), 30, 0.2, "the email")
    assert Notification.objects.filter(kind="report_ready", recipient=staff.email).count() == 1


def test_a_slice_that_completes_twice_does_not_hang_the_report(start_worker_process, settings) -> None:
    """django-celery-results counts a redelivered chord part twice: the counter reaches zero early and the body is lost."""
    make_sales(SALES)
    start_worker_process(REPORT_SLICE_DAYS="6", REPORT_SLICE_TEST_HOOK=HOOKS + "slow_after_the_first_slice")
    report = request()
    slices = ReportSlice.objects.filter(report=report).exclude(task_id="").order_by("period_start")
    wait_for(lambda: slices.count() == 2, 60, 0.1, "the slices to be sent")
    first, second = slices
    wait_for(lambda: TaskResult.objects.filter(task_id=first.task_id, status="SUCCESS").exists(), 60, 0.1, "slice 1")
    report.refresh_from_db()

    # The first slice's message again, as a redelivery brings it: same task id, same chord.
    from reports.tasks import aggregate_report_slice

    aggregate_report_slice.apply_async(
        [report.pk, str(first.period_start), str(first.period_end)],
        task_id=first.task_id,
        group_id=report.chord_id,
        chord=generation.finish_signature(report.pk),
    )
    wait_for(lambda: not ChordCounter.objects.filter(group_id=report.chord_id).exists(), 30, 0.1, "the early zero")
    wait_for(lambda: ReportSlice.objects.get(pk=second.pk).status == "done", 60, 0.2, "slice 2")

    report = sweeping_until_final(report, settings, 120)
    assert_figures_once(report)
    assert ReportSlice.objects.get(pk=first.pk).attempts == 1  # the redelivery found it done and left it


def test_a_slice_at_its_soft_time_limit_records_nothing_and_is_requeued(start_worker_process) -> None:
    make_sales(SALES)
    start_worker_process(
        REPORT_SLICE_DAYS="6", REPORT_SLICE_SOFT_TIME_LIMIT="2", REPORT_SLICE_TEST_HOOK=HOOKS + "slow_first_attempt"
    )
    report = request()

    wait_for(lambda: Report.objects.get(pk=report.pk).is_final, 90, 0.2, "the report to end")
    assert_figures_once(report)
    slices = list(ReportSlice.objects.filter(report=report))
    assert [part.attempts for part in slices] == [2, 2]  # stopped once each, then finished
    assert all(part.last_error == "" for part in slices)
    retried = TaskResult.objects.filter(task_name="reports.tasks.aggregate_report_slice", status="SUCCESS")
    assert retried.count() == 2


def test_a_slice_killed_by_its_hard_time_limit_does_not_leave_the_report_running(
    start_worker_process, settings
) -> None:
    make_sales(SALES)
    settings.REPORT_MAX_ATTEMPTS = 2
    worker = start_worker_process(
        REPORT_SLICE_DAYS="12",
        REPORT_SLICE_SOFT_TIME_LIMIT="1",
        REPORT_MAX_ATTEMPTS="2",
        REPORT_SLICE_TEST_HOOK=HOOKS + "deaf_to_soft_limit",
    )
    report = request()
    wait_for(lambda: ReportSlice.objects.filter(report=report, attempts=1).exists(), 60, 0.1, "the slice to start")

    report = sweeping_until_final(report, settings, 120)

    assert report.status == "failed"
    assert f"The slice {START} to {END} was started 2 times without finishing" in report.error
    assert not report.csv_file
    worker.kill_group()  # its child would sit out the whole warm shutdown in the deaf hook


def test_cancelling_a_running_report_stops_its_slice_revokes_the_rest_and_leaves_no_files(
    start_worker_process, broker, celery_app
) -> None:
    make_sales(SALES)
    env = {"REPORT_SLICE_DAYS": "4", "REPORT_SLICE_TEST_HOOK": HOOKS + "slow_always"}
    worker = start_worker_process(concurrency=1, **env)
    report = request()
    wait_for(lambda: ReportSlice.objects.filter(report=report, status="running").exists(), 60, 0.1, "a slice to run")
    running = ReportSlice.objects.get(report=report, status="running")
    waiting = list(ReportSlice.objects.filter(report=report).exclude(pk=running.pk).values_list("task_id", flat=True))

    client = Client()
    client.force_login(staff_with("reports.view_report", "reports.cancel_report"))
    response = client.post(f"/api/reports/{report.pk}/cancel/")
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")

    # The running slice stops at its next check and says so.
    stopped = wait_for(
        lambda: TaskResult.objects.filter(task_id=running.task_id, status="SUCCESS").first(), 30, 0.1, "it to stop"
    )
    assert "stopped" in stopped.result
    # The others are revoked on the worker, which keeps the ids in its state file.
    revoked = celery_app.control.inspect([worker.nodename], timeout=5).revoked()[worker.nodename]
    assert set(waiting) <= set(revoked)

    # A new worker never heard the revoke: the report's row stops its slices all the same.
    worker.stop()
    start_worker_process(concurrency=2, **env)
    wait_until_idle(broker, "the cancelled report's slices")
    report.refresh_from_db()
    assert (report.status, report.csv_file.name, report.chart.name) == ("cancelled", "", "")
    assert not ReportSlice.objects.filter(report=report, status__in=["done", "running"]).exists()
    # Called off, not failed: no ChordError for finish_report, nothing on the failures page.
    assert not TaskResult.objects.filter(task_name="reports.tasks.finish_report").exists()
    assert not Failure.objects.exists()


def test_a_finished_report_emails_who_asked_once_through_the_link_of_its_finish(start_worker_process) -> None:
    make_sales(SALES)
    start_worker_process(REPORT_SLICE_DAYS="4")
    staff = staff_with("reports.view_report")
    report = request(requested_by_id=staff.pk)

    wait_for(lambda: Notification.objects.filter(kind="report_ready").exists(), 60, 0.2, "the email")
    assert_figures_once(report)
    [email] = Notification.objects.filter(kind="report_ready")
    assert email.recipient == staff.email and f"/reports/{report.pk}/" in email.body_text

    # A second finish (a redelivery, or the sweep's) is skipped, and its link finds the email queued already.
    from core import dispatch

    again = generation.finish_signature(report.pk)
    assert dispatch.send_signature(again, [None], about="a second finish")
    notified = TaskResult.objects.filter(task_name="reports.tasks.notify_report_ready", status="SUCCESS")
    wait_for(lambda: notified.count() == 2, 60, 0.2, "the second link to run")
    assert Notification.objects.filter(kind="report_ready").count() == 1
