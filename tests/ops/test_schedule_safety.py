"""One bad schedule never stops beat or the admin; saving an enabled one needs the run permission; every edit is audited."""

from __future__ import annotations

import pytest
from django.test import Client
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from ops import schedules
from ops.models import ScheduleChange
from tests.factories import client_of, staff_with
from tests.ops.helpers import schedule_form

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/django_celery_beat/periodictask/add/"
CRONTAB_ADD_URL = "/admin/django_celery_beat/crontabschedule/add/"
NESTED_ARGS = "[" * 5000 + "]" * 5000


def crontab_form(**fields: str) -> dict[str, str]:
    base = {"minute": "0", "hour": "0", "day_of_month": "*", "month_of_year": "*", "day_of_week": "*"}
    return {**base, "timezone": "UTC", **fields}


def client_with(*permissions: str) -> Client:
    return client_of(staff_with(*permissions))


SCHEDULE_EDITOR = (
    "django_celery_beat.view_periodictask",
    "django_celery_beat.add_periodictask",
    "django_celery_beat.change_periodictask",
)


@pytest.fixture
def every_minute() -> IntervalSchedule:
    return IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"headers": "[1]"}, "headers", "must be a JSON object"),
        ({"headers": "{x"}, "headers", "Not valid JSON"),
        ({"args": NESTED_ARGS}, "args", "nested deeper"),
        ({"kwargs": '{"a": ' + "[" * 50 + "]" * 50 + "}"}, "kwargs", "nested deeper"),
        ({"kwargs": "[]"}, "kwargs", "must be a JSON object"),
    ],
)
def test_the_schedule_form_refuses_json_that_beat_cannot_use(admin_client, every_minute, fields, field, message):
    response = admin_client.post(ADD_URL, schedule_form(every_minute, **fields))

    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    assert not PeriodicTask.objects.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"day_of_month": "31", "month_of_year": "2"}, "never occurs"),
        ({"day_of_month": "30", "month_of_year": "2"}, "never occurs"),
        ({"minute": "-1"}, ""),
        ({"hour": "24"}, ""),
    ],
)
def test_the_crontab_form_refuses_a_crontab_that_cannot_run(admin_client, fields, message) -> None:
    response = admin_client.post(CRONTAB_ADD_URL, crontab_form(**fields))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors and message in str(errors)
    assert not CrontabSchedule.objects.exists()


def test_a_schedule_on_an_impossible_crontab_in_the_database_is_refused_by_the_task_form(admin_client) -> None:
    february_31 = CrontabSchedule.objects.create(minute="0", hour="0", day_of_month="31", month_of_year="2")

    response = admin_client.post(ADD_URL, schedule_form(crontab=february_31.pk))

    assert "never occurs" in " ".join(response.context["adminform"].form.errors["crontab"])
    assert not PeriodicTask.objects.exists()


def test_the_lists_show_rows_that_reached_the_database_another_way_as_broken(admin_client, every_minute) -> None:
    february_31 = CrontabSchedule.objects.create(minute="0", hour="0", day_of_month="31", month_of_year="2")
    minus_one = CrontabSchedule.objects.create(minute="-1")
    PeriodicTask.objects.create(name="Leap day", task="orders.tasks.check_pending_orders", crontab=february_31)
    PeriodicTask.objects.create(name="Odd minute", task="orders.tasks.check_pending_orders", crontab=minus_one)
    bad_headers = PeriodicTask.objects.create(
        name="Bad headers", task="orders.tasks.check_pending_orders", interval=every_minute, headers="[1]"
    )

    tasks = admin_client.get("/admin/django_celery_beat/periodictask/")
    crontabs = admin_client.get("/admin/django_celery_beat/crontabschedule/")
    page = admin_client.get(f"/admin/django_celery_beat/periodictask/{bad_headers.pk}/change/")

    assert tasks.status_code == crontabs.status_code == page.status_code == 200
    listing = tasks.content.decode()
    assert "never occurs" in listing and "headers: This must be a JSON object" in listing
    assert "cannot run" in crontabs.content.decode()
    assert "headers: This must be a JSON object, e.g. {}, not list." in page.content.decode()


def test_run_now_on_a_row_with_broken_headers_says_why_instead_of_a_500(admin_client, every_minute, broker) -> None:
    task = PeriodicTask.objects.create(
        name="Bad headers", task="orders.tasks.check_pending_orders", interval=every_minute, headers="{x"
    )

    response = admin_client.post(
        "/admin/django_celery_beat/periodictask/", {"action": "run_now", "_selected_action": [task.pk]}, follow=True
    )

    assert response.status_code == 200
    assert "Bad headers: headers: Not valid JSON" in response.content.decode()


# --- saving an enabled schedule runs a task ----------------------------------------------------------


def test_a_schedule_editor_without_the_run_permission_cannot_save_an_enabled_schedule(every_minute) -> None:
    editor = client_with(*SCHEDULE_EDITOR)

    refused = editor.post(ADD_URL, schedule_form(every_minute, name="One-off anything"))
    saved_disabled = editor.post(ADD_URL, schedule_form(every_minute, name="For later", enabled=""))

    assert "needs the 'Can run and retry tasks by hand' permission" in " ".join(
        refused.context["adminform"].form.errors["enabled"]
    )
    assert saved_disabled.status_code == 302
    assert list(PeriodicTask.objects.values_list("name", "enabled")) == [("For later", False)]


def test_enabling_or_toggling_needs_the_run_permission_and_running_editors_may(every_minute) -> None:
    task = PeriodicTask.objects.create(
        name="Sweep", task="orders.tasks.check_pending_orders", interval=every_minute, enabled=False
    )
    for action in ("enable_tasks", "toggle_tasks"):
        client_with(*SCHEDULE_EDITOR).post(
            "/admin/django_celery_beat/periodictask/", {"action": action, "_selected_action": [task.pk]}
        )
        task.refresh_from_db()
        assert not task.enabled, f"{action} worked without ops.run_task"

    runner = client_with(*SCHEDULE_EDITOR, "ops.run_task")
    runner.post("/admin/django_celery_beat/periodictask/", {"action": "enable_tasks", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.enabled
    assert runner.post(ADD_URL, schedule_form(every_minute, name="Enabled by a runner")).status_code == 302


def test_changing_a_crontab_that_an_enabled_task_uses_needs_the_run_permission() -> None:
    crontab = CrontabSchedule.objects.create(minute="0", hour="3")
    PeriodicTask.objects.create(name="Nightly", task="orders.tasks.check_pending_orders", crontab=crontab)
    url = f"/admin/django_celery_beat/crontabschedule/{crontab.pk}/change/"

    refused = client_with("django_celery_beat.change_crontabschedule").post(url, crontab_form(minute="*"))
    crontab.refresh_from_db()

    assert refused.status_code == 200 and crontab.minute == "0"
    assert (
        client_with("django_celery_beat.change_crontabschedule", "ops.run_task")
        .post(url, crontab_form(minute="*"))
        .status_code
        == 302
    )


# --- the audit trail ---------------------------------------------------------------------------------


def test_every_change_to_a_schedule_is_recorded_with_who_when_and_each_fields_old_and_new_value(
    admin_client, admin_user, every_minute
) -> None:
    admin_client.post(ADD_URL, schedule_form(every_minute))
    task = PeriodicTask.objects.get()
    admin_client.post(
        f"/admin/django_celery_beat/periodictask/{task.pk}/change/",
        schedule_form(every_minute, args="[]", kwargs="{}", description="Nightly", expire_seconds="50"),
    )
    admin_client.post(
        "/admin/django_celery_beat/periodictask/", {"action": "disable_tasks", "_selected_action": [task.pk]}
    )
    admin_client.post(f"/admin/django_celery_beat/periodictask/{task.pk}/delete/", {"post": "yes"})

    added, changed, disabled, deleted = ScheduleChange.objects.order_by("id")
    assert [c.action for c in (added, changed, disabled, deleted)] == ["added", "changed", "changed", "deleted"]
    assert {c.changed_by for c in (added, changed, disabled, deleted)} == {admin_user}
    assert added.changes["task"] == [None, "orders.tasks.check_pending_orders"]
    assert changed.changes == {"description": ["", "Nightly"], "expire_seconds": [None, "50"]}
    assert disabled.changes == {"enabled": ["True", "False"]}
    assert deleted.changes["name"] == ["Nightly sweep", None]
    assert all(c.object_name == "Nightly sweep" and c.kind == "periodic task" for c in (added, deleted))


def test_the_audit_trail_is_readable_in_the_admin_and_nobody_can_edit_or_delete_it(admin_client, every_minute):
    admin_client.post(ADD_URL, schedule_form(every_minute))
    change = ScheduleChange.objects.get()
    url = f"/admin/ops/schedulechange/{change.pk}/"

    assert "Nightly sweep" in admin_client.get("/admin/ops/schedulechange/").content.decode()
    assert admin_client.get(f"{url}change/").status_code == 200
    assert admin_client.post(f"{url}delete/", {"post": "yes"}).status_code == 403
    admin_client.post(
        "/admin/ops/schedulechange/", {"action": "delete_selected", "_selected_action": [change.pk], "post": "yes"}
    )
    admin_client.post(f"{url}change/", {"via": "nothing happened"})
    change.refresh_from_db()
    assert change.via == "admin"


def test_setup_schedules_records_what_it_creates_and_resets(every_minute) -> None:
    from django.core.management import call_command

    call_command("setup_schedules", verbosity=0)
    PeriodicTask.objects.filter(name="Reports: daily sales").update(enabled=False)
    call_command("setup_schedules", "--reset", "Reports: daily sales", verbosity=0)

    added = ScheduleChange.objects.filter(action="added", via="manage.py setup_schedules")
    assert added.count() == len(schedules.DEFAULTS)
    reset = ScheduleChange.objects.get(via="manage.py setup_schedules --reset")
    assert reset.changes == {"enabled": ["False", "True"]}
