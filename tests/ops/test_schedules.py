"""manage.py setup_schedules: the project's periodic tasks, installed once, never overwriting staff edits."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.forms.models import model_to_dict
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from ops import schedules

pytestmark = pytest.mark.django_db

EXPECTED = {
    "Orders: re-send stuck orders": "orders.tasks.check_pending_orders",
    "Notifications: re-send stale emails": "notifications.tasks.requeue_stale_notifications",
    "Reports: re-send stuck reports": "reports.tasks.check_stuck_reports",
    "Notifications: delete old emails": "notifications.tasks.cleanup_notifications",
    "Reports: daily sales": "reports.tasks.generate_daily_report",
    "Reports: weekly sales": "reports.tasks.generate_weekly_report",
    "Reports: monthly sales": "reports.tasks.generate_monthly_report",
    "Notifications: weekly digest": "notifications.tasks.send_weekly_digest",
    "Operations: delete old failures": "ops.tasks.cleanup_failures",
}


def run(*args: str) -> str:
    out = StringIO()
    call_command("setup_schedules", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list[dict]:
    return [model_to_dict(task) for task in PeriodicTask.objects.order_by("name")]


def test_it_installs_every_default_by_name() -> None:
    run()
    assert dict(PeriodicTask.objects.values_list("name", "task")) == EXPECTED


def test_running_it_twice_changes_nothing() -> None:
    run()
    before = snapshot()
    out = run()
    assert f"0 schedule(s) created, {len(EXPECTED)} already there" in out
    assert snapshot() == before


def test_crontabs_carry_the_time_zone_and_the_times_from_the_issue(settings) -> None:
    settings.TIME_ZONE = "Europe/Amsterdam"
    run()

    def cron(name: str) -> tuple:
        c = PeriodicTask.objects.get(name=name).crontab
        return (c.minute, c.hour, c.day_of_week, c.day_of_month, str(c.timezone))

    assert cron("Reports: daily sales") == ("5", "0", "*", "*", "Europe/Amsterdam")
    assert cron("Reports: weekly sales") == ("10", "0", "1", "*", "Europe/Amsterdam")
    assert cron("Reports: monthly sales") == ("15", "0", "*", "1", "Europe/Amsterdam")
    assert cron("Notifications: weekly digest") == ("0", "9", "1", "*", "Europe/Amsterdam")
    assert cron("Notifications: delete old emails")[:2] == ("17", "*")  # hourly
    assert PeriodicTask.objects.get(name="Orders: re-send stuck orders").interval.every == 60


@pytest.mark.parametrize("default", schedules.DEFAULTS, ids=lambda d: d.name)
def test_every_default_expires_before_its_next_run(default: schedules.DefaultSchedule) -> None:
    if default.every_seconds:
        period = default.every_seconds
    elif "day_of_week" in default.crontab or "day_of_month" in default.crontab:
        period = 7 * schedules.DAY
    elif "hour" in default.crontab:
        period = schedules.DAY
    else:
        period = schedules.HOUR
    assert 0 < default.expire_seconds < period


def test_a_staff_edit_survives_and_reset_restores_the_default() -> None:
    run()
    daily = PeriodicTask.objects.get(name="Reports: daily sales")
    daily.crontab = CrontabSchedule.objects.create(minute="30", hour="2", timezone=settings.TIME_ZONE)
    daily.enabled = False
    daily.save()

    run()
    daily.refresh_from_db()
    assert (daily.crontab.minute, daily.crontab.hour, daily.enabled) == ("30", "2", False)
    assert "changed: schedule, disabled" in run("--list")

    assert "Restored 'Reports: daily sales'" in run("--reset", "Reports: daily sales")
    daily.refresh_from_db()
    assert (daily.crontab.minute, daily.crontab.hour, daily.enabled) == ("5", "0", True)
    assert "changed" not in run("--list").split("Reports: daily sales")[1].split("Reports: weekly")[0]


def test_reset_recreates_a_deleted_default_and_list_shows_missing_ones() -> None:
    assert run("--list").count("missing") == len(EXPECTED)
    run("--reset", "Reports: weekly sales")
    assert PeriodicTask.objects.filter(name="Reports: weekly sales").exists()


def test_an_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(CommandError, match="No default schedule is called 'Nightly'"):
        run("--reset", "Nightly")


def test_it_leaves_result_cleanup_to_beat_and_the_setting_empty() -> None:
    run()
    assert not PeriodicTask.objects.filter(task="celery.backend_cleanup").exists()
    assert not getattr(settings, "CELERY_BEAT_SCHEDULE", None)
