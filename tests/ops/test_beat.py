"""Beat processes for real: admin edits take effect without a restart, and two beats send each run once."""

from __future__ import annotations

import signal
import time

import pytest
from django.test import Client
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks
from django_celery_results.models import TaskResult

from ops.models import BeatHeartbeat
from tests.ops.helpers import schedule_form
from tests.support.processes import BeatProcess, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def runs_of(name: str) -> int:
    return TaskResult.objects.filter(periodic_task_name=name).count()


@pytest.mark.rabbitmq
def test_a_schedule_created_changed_and_disabled_in_the_admin_takes_effect_without_a_restart(
    start_worker_process, process_env, admin_client
) -> None:
    start_worker_process()
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    with BeatProcess(process_env) as beat:
        wait_for(lambda: "is the leader now" in beat.output(), 30, 0.2, "beat to lead")

        response = admin_client.post(
            "/admin/django_celery_beat/periodictask/add/",
            schedule_form(every_second, name="Sweep often", expire_seconds="5"),
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        wait_for(lambda: runs_of("Sweep often") >= 2, 30, 0.2, "the new schedule's runs")

        task = PeriodicTask.objects.get(name="Sweep often")
        admin_client.post(
            f"/admin/django_celery_beat/periodictask/{task.pk}/change/",
            schedule_form(
                every_second,
                name="Sweep often",
                regtask="notifications.tasks.requeue_stale_notifications",
                expire_seconds="5",
            ),
        )
        wait_for(
            lambda: TaskResult.objects.filter(
                periodic_task_name="Sweep often", task_name="notifications.tasks.requeue_stale_notifications"
            ).exists(),
            30,
            0.2,
            "the edited schedule's task",
        )

        admin_client.post(
            "/admin/django_celery_beat/periodictask/", {"action": "disable_tasks", "_selected_action": [task.pk]}
        )
        # Count what beat sends, not what the worker has run by then: a loaded worker runs late.
        disabled_at = len(beat.output())
        wait_for(lambda: "Schedule changed" in beat.output()[disabled_at:], 30, 0.2, "beat to read the change")
        noticed_at = len(beat.output())
        time.sleep(5)  # five runs' worth of a 1 s schedule
        assert "Sending due task Sweep often" not in beat.output()[noticed_at:], "runs went on after it was disabled"


@pytest.mark.rabbitmq
def test_two_beats_send_each_run_once_and_the_standby_takes_over_when_the_leader_dies(
    start_worker_process, process_env
) -> None:
    start_worker_process()
    PeriodicTask.objects.create(
        name="Every two seconds",
        task="orders.tasks.check_pending_orders",
        interval=IntervalSchedule.objects.create(every=2, period=IntervalSchedule.SECONDS),
    )
    with BeatProcess(process_env) as first, BeatProcess(process_env) as second:
        wait_for(lambda: BeatHeartbeat.objects.count() == 2, 30, 0.2, "both beats to report")
        leaders = wait_for(
            lambda: [b for b in (first, second) if "is the leader now" in b.output()] or None, 30, 0.2, "a leader"
        )
        [leader] = leaders
        standby = second if leader is first else first
        assert "is standby" in standby.output()
        assert set(BeatHeartbeat.objects.values_list("role", flat=True)) == {"leader", "standby"}

        wait_for(lambda: runs_of("Every two seconds") >= 1, 30, 0.2, "the first run")

        # Count what the beats send, not what the worker has run by then: a loaded worker runs late.
        def sent() -> int:
            return sum(b.output().count("Sending due task Every two seconds") for b in (first, second))

        start, began = sent(), time.monotonic()
        time.sleep(10)
        ran, elapsed = sent() - start, time.monotonic() - began
        # One beat sends every 2 s: about elapsed/2 runs. Two beats would send twice that.
        assert ran <= elapsed / 2 + 1, f"{ran} runs in {elapsed:.0f}s: more than one beat is sending"
        assert ran >= elapsed / 2 - 2, f"{ran} runs in {elapsed:.0f}s: the leader is not sending"
        assert "Sending due task" not in standby.output()

        leader.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: "is the leader now" in standby.output(), 30, 0.2, "the standby to take over")
        takeover = time.monotonic() - killed_at
        assert takeover < 15, f"the standby took {takeover:.1f}s to take over"
        before = runs_of("Every two seconds")
        wait_for(lambda: runs_of("Every two seconds") >= before + 2, 30, 0.2, "runs under the new leader")


def test_beat_skips_bad_rows_by_name_keeps_running_the_rest_and_health_lists_them(
    start_worker_process, process_env, settings
) -> None:
    """Rows that reached the database without the admin's checks: beat must neither exit nor stop the others."""
    start_worker_process()
    settings.METRICS_TOKEN = "beat-test-token"
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    task = "orders.tasks.check_pending_orders"
    PeriodicTask.objects.create(name="Good", task=task, interval=every_second)
    bad = {
        "List headers": {"interval": every_second, "headers": "[1]"},
        "Broken headers": {"interval": every_second, "headers": "{x"},
        "Deep args": {"interval": every_second, "args": "[" * 5000 + "]" * 5000},
        "Leap day": {"crontab": CrontabSchedule.objects.create(day_of_month="31", month_of_year="2")},
        "Odd minute": {"crontab": CrontabSchedule.objects.create(minute="-1")},
    }
    for name, fields in bad.items():
        PeriodicTask.objects.create(name=name, task=task, **fields)

    with BeatProcess(process_env) as beat:
        wait_for(lambda: runs_of("Good") >= 2, 30, 0.2, "the good schedule's runs")
        leader = wait_for(
            lambda: BeatHeartbeat.objects.filter(role="leader").exclude(skipped_schedules={}).first(),
            30,
            0.2,
            "beat to report what it skipped",
        )
        assert beat.alive()
        assert set(leader.skipped_schedules) == set(bad)
        for name in bad:
            assert f"beat skips schedule '{name}'" in beat.output()
        health = Client().get("/health/", headers={"Authorization": "Bearer beat-test-token"}).json()
        assert "broken_schedules" in health["failing"]
        assert set(health["checks"]["broken_schedules"]["broken"]) == set(bad)

        PeriodicTask.objects.filter(name="Broken headers").update(headers="{}")
        PeriodicTasks.update_changed()  # what the admin's save does: beat re-reads the table
        wait_for(lambda: runs_of("Broken headers") >= 1, 30, 0.2, "the mended schedule to run")
        wait_for(
            lambda: "Broken headers" not in BeatHeartbeat.objects.get(role="leader").skipped_schedules,
            30,
            0.2,
            "beat to stop listing the mended schedule",
        )
    assert sum(runs_of(name) for name in bad if name != "Broken headers") == 0
