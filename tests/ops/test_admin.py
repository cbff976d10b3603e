"""The schedule and result admin: validation, plain words, next runs, history, Run now and Retry."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from ops.models import TaskRun
from tests.factories import UserFactory
from tests.ops.helpers import schedule_form
from tests.orders.helpers import place, product
from tests.support.broker import messages_in

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/django_celery_beat/periodictask/add/"


@pytest.fixture
def plain_admin_client() -> Client:
    """Staff who may manage schedules and results, but not run or retry tasks by hand."""
    user = UserFactory(is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=["django_celery_beat", "django_celery_results"])
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"regtask": "", "task": "orders.tasks.does_not_exist"}, "task", "not a registered task"),
        ({"regtask": "orders.tasks.nope"}, "regtask", "Select a valid choice"),
        ({"regtask": "", "task": "celery.chord_unlock"}, "task", "not a registered task of this project"),
        ({"regtask": "orders.tasks.process_order", "args": "[]"}, "args", "missing a required argument: 'order_id'"),
        ({"regtask": "orders.tasks.process_order", "args": "[1, 2]"}, "args", "too many positional arguments"),
        (
            {"regtask": "orders.tasks.process_order", "args": "[1]", "kwargs": '{"order": 1}'},
            "args",
            "unexpected keyword argument 'order'",
        ),
        ({"args": '{"a": 1}'}, "args", "JSON list"),
        ({"args": "[1,"}, "args", "Not valid JSON"),
        ({"queue": "urgent"}, "queue", "'urgent' is not a queue"),
    ],
)
def test_the_schedule_form_rejects_what_cannot_run(admin_client, fields: dict, field: str, message: str) -> None:
    interval = IntervalSchedule.objects.create(every=10, period="seconds")
    response = admin_client.post(ADD_URL, schedule_form(interval, **fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors.get(field, [])), errors
    assert not PeriodicTask.objects.filter(name="Nightly sweep").exists()


def test_a_valid_schedule_is_saved(admin_client) -> None:
    interval = IntervalSchedule.objects.create(every=10, period="seconds")
    response = admin_client.post(
        ADD_URL, schedule_form(interval, regtask="orders.tasks.process_order", args="[7]", queue="default")
    )
    assert response.status_code == 302
    assert PeriodicTask.objects.get(name="Nightly sweep").args == "[7]"


def test_the_list_shows_plain_words_next_run_last_run_and_the_last_result(admin_client, settings) -> None:
    settings.TIME_ZONE = "Europe/Amsterdam"
    crontab = CrontabSchedule.objects.create(minute="5", hour="0", timezone="Europe/Amsterdam")
    task = PeriodicTask.objects.create(
        name="Daily",
        task="reports.tasks.generate_daily_report",
        crontab=crontab,
        last_run_at=timezone.now() - timedelta(hours=1),
    )
    TaskResult.objects.create(task_id="old", task_name=task.task, periodic_task_name="Daily", status="SUCCESS")
    latest = TaskResult.objects.create(task_id="new", task_name=task.task, periodic_task_name="Daily", status="FAILURE")

    page = admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()

    assert "At 12:05 AM Europe/Amsterdam" in page
    assert "00:05:00 CET" in page or "00:05:00 CEST" in page
    assert f'href="/admin/django_celery_results/taskresult/{latest.pk}/change/">FAILURE</a>' in page


def test_the_change_page_shows_the_next_five_runs_and_the_last_ten_results(admin_client) -> None:
    task = PeriodicTask.objects.create(
        name="Often",
        task="orders.tasks.check_pending_orders",
        interval=IntervalSchedule.objects.create(every=1, period="minutes"),
    )
    for index in range(12):
        TaskResult.objects.create(
            task_id=f"run-{index}", task_name=task.task, periodic_task_name="Often", status="SUCCESS"
        )

    page = admin_client.get(f"/admin/django_celery_beat/periodictask/{task.pk}/change/").content.decode()
    section = page.split("Next 5 runs")[1].split("Last 10 results")[0]
    assert section.count(" UTC") == 5
    results = page.split("Last 10 results")[1]
    assert results.count("/admin/django_celery_results/taskresult/") == 10
    assert "run-11" in results and "run-1<" not in results


def test_a_shared_schedule_shows_which_tasks_use_it(admin_client) -> None:
    minute = IntervalSchedule.objects.create(every=1, period="minutes")
    for name in ("A sweep", "B sweep"):
        PeriodicTask.objects.create(name=name, task="orders.tasks.check_pending_orders", interval=minute)
    page = admin_client.get("/admin/django_celery_beat/intervalschedule/").content.decode()
    assert "A sweep, B sweep" in page
    change = admin_client.get(f"/admin/django_celery_beat/intervalschedule/{minute.pk}/change/").content.decode()
    assert "reschedules all 2 of them" in change
    assert admin_client.get("/admin/django_celery_beat/intervalschedule/add/").status_code == 200
    crontab = CrontabSchedule.objects.create(minute="0", hour="9")
    page = admin_client.get(f"/admin/django_celery_beat/crontabschedule/{crontab.pk}/change/").content.decode()
    assert "No periodic task uses this schedule." in page


def test_run_now_sends_with_the_stored_args_queue_priority_and_expires(admin_client, broker) -> None:
    task = PeriodicTask.objects.create(
        name="Process 7",
        task="orders.tasks.process_order",
        args="[7]",
        queue="low_priority",
        priority=3,
        expire_seconds=30,
        interval=IntervalSchedule.objects.create(every=1, period="hours"),
    )

    response = admin_client.post(
        "/admin/django_celery_beat/periodictask/", {"action": "run_now", "_selected_action": [task.pk]}, follow=True
    )

    run = TaskRun.objects.get()
    assert f"?q={run.task_id}" in response.content.decode()
    [message] = messages_in(broker, "low_priority")
    assert message["headers"]["id"] == run.task_id
    assert message["headers"]["argsrepr"] == "[7]"
    assert message["headers"]["expires"] is not None
    assert message["headers"]["periodic_task_name"] == "Process 7"
    assert message["properties"]["priority"] == 3
    assert (run.source, run.periodic_task_name, run.args) == ("run_now", "Process 7", [7])


def test_staff_without_the_permission_cannot_run_or_retry(plain_admin_client, broker) -> None:
    task = PeriodicTask.objects.create(
        name="Sweep",
        task="orders.tasks.check_pending_orders",
        interval=IntervalSchedule.objects.create(every=1, period="hours"),
    )
    result = TaskResult.objects.create(
        task_id="failed-1",
        task_name="orders.tasks.check_pending_orders",
        status="FAILURE",
        task_args='"[]"',
        task_kwargs='"{}"',
    )

    listing = plain_admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert "run_now" not in listing
    plain_admin_client.post(
        "/admin/django_celery_beat/periodictask/", {"action": "run_now", "_selected_action": [task.pk]}
    )
    plain_admin_client.post(
        "/admin/django_celery_results/taskresult/", {"action": "retry_selected", "_selected_action": [result.pk]}
    )

    assert not TaskRun.objects.exists()
    assert all(messages_in(broker, queue) == [] for queue in ("high_priority", "default", "low_priority"))


def test_retry_sends_the_original_json_arguments_as_a_new_task_linked_to_the_old(
    admin_client, broker, admin_user, django_capture_on_commit_callbacks
) -> None:
    old = TaskResult.objects.create(
        task_id="digest-1",
        task_name="notifications.tasks.send_digest_chunk",
        status="FAILURE",
        task_args=json.dumps("[10,20]"),
        task_kwargs=json.dumps("{}"),
    )

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            "/admin/django_celery_results/taskresult/", {"action": "retry_selected", "_selected_action": [old.pk]}
        )

    run = TaskRun.objects.get()
    assert (run.retry_of, run.args, run.requested_by, run.source) == ("digest-1", [10, 20], admin_user, "retry")
    [message] = messages_in(broker, "low_priority")
    assert (message["headers"]["id"], message["headers"]["argsrepr"]) == (run.task_id, "[10,20]")
    page = admin_client.get(f"/admin/django_celery_results/taskresult/{old.pk}/change/").content.decode()
    assert run.task_id in page.split("Retried as")[1]


def test_a_result_whose_arguments_are_a_python_repr_is_not_retried(admin_client) -> None:
    old = TaskResult.objects.create(
        task_id="legacy",
        task_name="orders.tasks.process_order",
        status="FAILURE",
        task_args=json.dumps("(42,)"),
        task_kwargs=json.dumps("{}"),
    )
    response = admin_client.post(
        "/admin/django_celery_results/taskresult/",
        {"action": "retry_selected", "_selected_action": [old.pk]},
        follow=True,
    )
    assert "arguments were not recorded as JSON" in response.content.decode()
    assert not TaskRun.objects.exists()


def test_a_results_page_links_to_its_order_and_filters_by_task_and_periodic_task(admin_client, customer) -> None:
    order = place(customer, (product(), 1))
    result = TaskResult.objects.create(
        task_id="order-run",
        task_name="orders.tasks.process_order",
        status="SUCCESS",
        periodic_task_name="",
        task_args=json.dumps(json.dumps([order.pk])),
        task_kwargs=json.dumps("{}"),
    )
    TaskResult.objects.create(
        task_id="other",
        task_name="reports.tasks.generate_daily_report",
        status="SUCCESS",
        periodic_task_name="Reports: daily sales",
    )

    page = admin_client.get(f"/admin/django_celery_results/taskresult/{result.pk}/change/").content.decode()
    assert f'href="/admin/orders/order/{order.pk}/change/">order #{order.pk}</a>' in page

    def listed(query: str) -> set[str]:
        return {
            r.task_id
            for r in admin_client.get(f"/admin/django_celery_results/taskresult/?{query}").context["cl"].result_list
        }

    assert listed("task_name=orders.tasks.process_order") == {"order-run"}
    assert listed("periodic_task_name=Reports%3A+daily+sales") == {"other"}
    assert listed("status=SUCCESS") == {"order-run", "other"}
