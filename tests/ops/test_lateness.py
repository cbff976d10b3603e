"""Missed runs of schedules: when a success is owed, and why a schedule that missed it is late."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_celery_beat.tzcrontab import TzAwareCrontab
from django_celery_results.models import TaskResult

from ops import lateness
from tests.support import tasks

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 18, 12, 0, tzinfo=UTC)  # a Wednesday
SUCCEEDS, FAILS = tasks.succeeds.name, tasks.always_fails.name
GRACE = timedelta(seconds=2)  # SCHEDULE_GRACE 0 plus the test tasks' 2 s time limit


@pytest.fixture(autouse=True)
def _no_extra_grace(settings) -> None:
    settings.SCHEDULE_GRACE = timedelta(0)


def schedule(
    name: str = "Job", task: str = SUCCEEDS, *, changed: datetime, last_run: datetime | None = None, **fields: object
) -> PeriodicTask:
    if "interval" not in fields and "crontab" not in fields and "clocked" not in fields and "solar" not in fields:
        fields["interval"] = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)[0]
    row = PeriodicTask.objects.create(name=name, task=task, **fields)
    # Both are written by beat and auto_now; set them as beat would have left them.
    PeriodicTask.objects.filter(pk=row.pk).update(date_changed=changed, last_run_at=last_run)
    return row


def result(name: str, status: str, done: datetime, value: object = None) -> TaskResult:
    row = TaskResult.objects.create(
        task_id=f"{name}-{status}-{done.timestamp()}",
        task_name=SUCCEEDS,
        status=status,
        periodic_task_name=name,
        result=json.dumps(value),
    )
    TaskResult.objects.filter(pk=row.pk).update(date_done=done)
    return row


def check(name: str = "Job", now: datetime = NOW) -> lateness.ScheduleCheck:
    return next(c for c in lateness.schedule_checks(now) if c.name == name)


def daily(hour: int, minute: int, zone: str = "UTC") -> CrontabSchedule:
    return CrontabSchedule.objects.create(minute=str(minute), hour=str(hour), timezone=zone)


# --- the last fire time of a crontab, computed backwards --------------------------------------

CRONTABS = [
    {"minute": "5", "hour": "0"},
    {"minute": "*/15"},
    {"minute": "17"},
    {"minute": "10", "hour": "0", "day_of_week": "1"},
    {"minute": "15", "hour": "0", "day_of_month": "1"},
    {"minute": "0", "hour": "9", "day_of_week": "1-5"},
    {"minute": "30", "hour": "2", "day_of_month": "29", "month_of_year": "2"},
    {"minute": "0,30", "hour": "1-3", "day_of_month": "1-7", "day_of_week": "0"},
]
MOMENTS = [
    datetime(2026, 3, 18, 12, 0, 30, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # Amsterdam's clocks go forward at 01:00 UTC
    datetime(2026, 10, 25, 0, 45, tzinfo=UTC),  # and back at 01:00 UTC
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Amsterdam"])
@pytest.mark.parametrize("spec", CRONTABS, ids=lambda spec: " ".join(f"{k}={v}" for k, v in spec.items()))
@pytest.mark.parametrize("moment", MOMENTS, ids=lambda moment: moment.isoformat())
def test_the_last_fire_is_the_one_celerys_own_forward_rules_give(spec: dict, moment: datetime, zone: str) -> None:
    cron = TzAwareCrontab(tz=ZoneInfo(zone), **spec)
    fire = lateness.last_fire(cron, moment)
    assert fire is not None and fire <= moment

    def next_after(when: datetime) -> datetime:
        base, delta, _now = cron.remaining_delta(when)
        return base + delta

    # Celery itself, counting forward from just before it, fires exactly then, and not again until after `moment`.
    assert next_after(fire - timedelta(seconds=1)) == fire
    assert next_after(fire) > moment


# --- when a success is owed -------------------------------------------------------------------


def test_a_new_schedule_owes_nothing_before_its_first_run_and_its_grace() -> None:
    schedule(changed=NOW - timedelta(seconds=61))
    assert check().late is False and check().owed_since is None
    # Its first run was due at changed + 60 s; a success is owed once the grace after it is over.
    assert check(now=NOW + GRACE).late is True


def test_an_interval_schedule_is_late_once_its_last_success_is_older_than_the_period_and_the_grace() -> None:
    schedule(changed=NOW - timedelta(days=1), last_run=NOW - timedelta(seconds=5))
    result("Job", "SUCCESS", NOW - timedelta(seconds=61))
    assert check().late is False
    assert check(now=NOW + GRACE).late is True
    late = check(now=NOW + GRACE + timedelta(seconds=30))
    assert late.overdue_seconds(NOW + GRACE + timedelta(seconds=30)) == pytest.approx(30 + 1)


def test_a_daily_schedule_owes_the_success_of_todays_run_once_its_grace_is_over() -> None:
    cron = daily(0, 5)
    schedule(crontab=cron, changed=NOW - timedelta(days=10), last_run=NOW.replace(hour=0, minute=5))
    result("Job", "SUCCESS", NOW.replace(hour=0, minute=5) - timedelta(days=1))
    due = NOW.replace(hour=0, minute=5)
    assert check(now=due + GRACE - timedelta(seconds=1)).late is False  # yesterday's success still covers it
    late = check(now=due + GRACE)
    assert late.late is True and late.owed_since == due
    result("Job", "SUCCESS", due + timedelta(seconds=1))
    assert check(now=due + GRACE).late is False


def test_a_crontab_in_the_shops_zone_is_owed_at_its_local_time() -> None:
    cron = daily(9, 0, "Europe/Amsterdam")  # 08:00 UTC in March
    schedule(crontab=cron, changed=NOW - timedelta(days=10), last_run=NOW - timedelta(hours=4))
    result("Job", "SUCCESS", datetime(2026, 3, 18, 7, 0, tzinfo=UTC))  # before today's 09:00 Amsterdam
    assert check().owed_since == datetime(2026, 3, 18, 8, 0, tzinfo=UTC)
    assert check().late is True


def test_a_schedule_created_after_todays_fire_time_owes_nothing_until_tomorrow() -> None:
    schedule(crontab=daily(0, 5), changed=NOW - timedelta(hours=1))
    assert check().late is False
    assert check(now=NOW + timedelta(hours=12, minutes=5) + GRACE).late is True


def test_a_schedule_that_beat_sent_but_never_succeeded_owes_its_first_run_only_after_the_grace() -> None:
    schedule(changed=NOW - timedelta(seconds=60), last_run=NOW - timedelta(seconds=1))
    result("Job", "FAILURE", NOW - timedelta(seconds=1), {"exc_type": "ValueError", "exc_message": ["boom"]})
    assert check().late is False  # the first run may still be within its grace
    assert check(now=NOW + GRACE).late is True


def test_a_schedule_beat_sent_many_times_that_no_worker_took_is_late() -> None:
    row = schedule(changed=NOW - timedelta(seconds=5), last_run=NOW - timedelta(seconds=1))
    assert check().late is False  # sent once, a second ago
    PeriodicTask.objects.filter(pk=row.pk).update(total_run_count=3)  # so the first send was two periods earlier
    assert check().late is True


def test_a_daily_schedule_sent_twice_counts_back_one_day_to_its_first_send() -> None:
    today = NOW.replace(hour=0, minute=5)
    row = schedule(crontab=daily(0, 5), changed=today, last_run=today + timedelta(seconds=1))
    assert check(now=today + GRACE + timedelta(seconds=1)).owed_since == today + timedelta(seconds=1)
    PeriodicTask.objects.filter(pk=row.pk).update(total_run_count=2)
    assert check(now=today + GRACE + timedelta(seconds=1)).owed_since == today


def test_a_start_time_in_the_future_owes_nothing() -> None:
    schedule(changed=NOW - timedelta(days=2), start_time=NOW + timedelta(hours=1))
    assert check().late is False


def test_a_clocked_one_off_is_owed_after_its_time() -> None:
    clocked = ClockedSchedule.objects.create(clocked_time=NOW - timedelta(minutes=10))
    schedule(clocked=clocked, one_off=True, changed=NOW - timedelta(days=1), last_run=NOW - timedelta(minutes=10))
    assert check().late is True


def test_disabled_and_solar_schedules_are_not_checked() -> None:
    schedule("Off", changed=NOW - timedelta(days=1), enabled=False)
    sunrise = SolarSchedule.objects.create(event="sunrise", latitude=52.37, longitude=4.9)
    schedule("Solar", solar=sunrise, changed=NOW - timedelta(days=1))
    checks = {c.name: c for c in lateness.schedule_checks(NOW)}
    assert "Off" not in checks
    assert checks["Solar"].checked is False and checks["Solar"].late is False


# --- why it is late ----------------------------------------------------------------------------


def test_a_schedule_whose_runs_fail_says_so_with_the_error() -> None:
    schedule(task=FAILS, changed=NOW - timedelta(days=1), last_run=NOW - timedelta(seconds=5))
    result("Job", "SUCCESS", NOW - timedelta(hours=2))
    result("Job", "FAILURE", NOW - timedelta(seconds=5), {"exc_type": "ValueError", "exc_message": ["boom"]})
    late = check()
    assert late.late is True and late.cause == "failing"
    assert "its runs fail" in late.reason and "ValueError: boom" in late.reason


def test_a_schedule_whose_message_expired_says_so() -> None:
    schedule(changed=NOW - timedelta(days=1), last_run=NOW - timedelta(seconds=20))
    error = {"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}
    result("Job", "REVOKED", NOW - timedelta(seconds=5), error)
    assert "its message expired before a worker took it" in check().reason
    assert check().cause == "expired"


def test_a_schedule_sent_but_never_taken_names_its_queue() -> None:
    schedule(changed=NOW - timedelta(days=1), last_run=NOW - timedelta(seconds=5), queue="low_priority")
    assert "beat sent it at" in check().reason and "consuming low_priority" in check().reason


def test_a_schedule_routed_by_the_routing_table_names_the_routed_queue() -> None:
    schedule(task="reports.tasks.generate_daily_report", changed=NOW - timedelta(days=1), last_run=NOW)
    # Its grace is its 90 s time limit.
    assert "consuming low_priority" in check(now=NOW + timedelta(seconds=91)).reason


def test_a_schedule_beat_stopped_sending_asks_whether_beat_runs() -> None:
    schedule(changed=NOW - timedelta(days=1), last_run=NOW - timedelta(hours=1))
    assert "beat has not sent it since (is beat running?)" in check().reason


def test_the_schedule_admin_list_marks_late_schedules(admin_client) -> None:
    schedule("Fine", changed=timezone.now() - timedelta(days=1), last_run=timezone.now())
    result("Fine", "SUCCESS", timezone.now())
    schedule("Stuck", changed=timezone.now() - timedelta(days=1), last_run=timezone.now() - timedelta(hours=1))
    page = admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert page.count('class="schedule-late"') == 1
    assert "late</strong> (not sent)" in page and "is beat running?" in page  # the full reason is its title
    assert "on time" in page


# --- with a real beat and real workers ------------------------------------------------------------


def every_second() -> IntervalSchedule:
    return IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)[0]


def live_check(name: str) -> lateness.ScheduleCheck:
    return check(name, now=timezone.now())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_schedule_that_fails_every_time_and_one_no_worker_takes_are_late_while_a_healthy_one_is_not(
    process_env, broker, celery_app, staff, settings
) -> None:
    from django.test import Client

    from tests.support.processes import BeatProcess, WorkerProcess, wait_for

    settings.WORKER_PING_MAX_AGE = timedelta(0)
    # Room for a worker slowed down by a busy machine, so that the healthy schedule stays on time.
    settings.SCHEDULE_GRACE = timedelta(seconds=10)
    PeriodicTask.objects.create(name="Fails", task=FAILS, interval=every_second())
    PeriodicTask.objects.create(name="Succeeds", task=SUCCEEDS, interval=every_second())
    PeriodicTask.objects.create(name="Nobody takes", task=SUCCEEDS, interval=every_second(), queue="low_priority")
    worker = WorkerProcess(process_env, queues="high_priority,default", extra=tasks.INCLUDE)
    with worker, BeatProcess(process_env):
        worker.wait_ready(celery_app)
        wait_for(lambda: live_check("Fails").late and live_check("Nobody takes").late, 60, 0.3, "both to be late")

        failing = live_check("Fails")
        assert "its runs fail" in failing.reason and "ValueError: this task fails every time" in failing.reason
        assert "beat sent it at" in live_check("Nobody takes").reason
        assert "consuming low_priority" in live_check("Nobody takes").reason
        healthy = live_check("Succeeds")
        assert healthy.late is False and healthy.last_success_at is not None

        client = Client()
        assert client.get("/health/").json()["warnings"] == ["schedules"]  # anyone learns that much
        settings.METRICS_TOKEN = "lateness-token"
        body = client.get("/health/", headers={"Authorization": "Bearer lateness-token"}).json()
        assert body["warnings"] == ["schedules"]
        late = {item["name"]: item for item in body["checks"]["schedules"]["late"]}
        assert set(late) == {"Fails", "Nobody takes"}
        assert late["Fails"]["cause"] == "failing" and late["Nobody takes"]["cause"] == "not taken"
        assert "this task fails every time" not in str(body)  # anyone may read /health/; errors stay in the admin
        assert "schedules" not in body["failing"]
        client.force_login(staff)
        metrics = client.get("/metrics").content.decode()
        assert f'backoffice_schedule_late{{schedule="Fails",task="{FAILS}"}} 1.0' in metrics
        assert f'backoffice_schedule_late{{schedule="Succeeds",task="{SUCCEEDS}"}} 0.0' in metrics
        assert 'backoffice_queue_workers{queue="low_priority"} 0.0' in metrics


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_schedule_whose_messages_expired_before_a_worker_took_them_is_late_for_that_reason(
    process_env, broker, celery_app
) -> None:
    from tests.support.processes import BeatProcess, WorkerProcess, wait_for

    PeriodicTask.objects.create(
        name="Expiring", task=SUCCEEDS, interval=every_second(), queue="low_priority", expire_seconds=1
    )
    with BeatProcess(process_env) as beat:
        sent = wait_for(lambda: PeriodicTask.objects.get(name="Expiring").last_run_at, 60, 0.2, "beat to send it")
    assert beat.alive() is False
    # Nobody consumed low_priority while beat ran; once the last message's expiry has
    # passed, a worker for low_priority finds only expired messages.
    wait_for(
        lambda: timezone.now() > PeriodicTask.objects.get(name="Expiring").last_run_at + timedelta(seconds=1),
        10,
        0.1,
        "the last message to expire",
    )
    with WorkerProcess(process_env, queues="low_priority", extra=tasks.INCLUDE) as worker:
        worker.wait_ready(celery_app)
        wait_for(
            lambda: TaskResult.objects.filter(periodic_task_name="Expiring", status="REVOKED").exists(),
            30,
            0.2,
            "the worker to drop the expired messages",
        )
    assert not TaskResult.objects.filter(periodic_task_name="Expiring", status="SUCCESS").exists()
    assert sent is not None
    # Checked as it stood when the grace after beat's last send was over (beat was stopped above).
    expired = check("Expiring", now=PeriodicTask.objects.get(name="Expiring").last_run_at + GRACE)
    assert expired.late is True
    assert "its message expired before a worker took it" in expired.reason
