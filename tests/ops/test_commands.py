"""The operator's commands: run_task, task_status, queue_stats, beat_status and purge_results."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_results.models import TaskResult

from ops.models import BeatHeartbeat, TaskRun
from tests.factories import UserFactory
from tests.support.broker import messages_in

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["orders.tasks.nope"], "'orders.tasks.nope' is not a registered task of this project"),
        (["celery.chord_unlock"], "is not a registered task of this project"),
        (["orders.tasks.process_order"], "missing a required argument: 'order_id'"),
        (["orders.tasks.process_order", "--args", "[1, 2]"], "too many positional arguments"),
        (
            ["orders.tasks.process_order", "--args", "[1]", "--kwargs", '{"order": 1}'],
            "unexpected keyword argument 'order'",
        ),
        (["orders.tasks.process_order", "--args", "[1,"], "args: Not valid JSON"),
        (["orders.tasks.process_order", "--args", '{"a": 1}'], "JSON list"),
        (["orders.tasks.process_order", "--kwargs", "[1]"], "JSON object"),
        (["orders.tasks.check_pending_orders", "--queue", "urgent"], "'urgent' is not a queue"),
        (["orders.tasks.check_pending_orders", "--countdown", "-5"], "countdown cannot be negative"),
        (["orders.tasks.check_pending_orders", "--countdown", "nan"], "countdown must be a number of seconds"),
        (["orders.tasks.check_pending_orders", "--countdown", "inf"], "countdown must be a number of seconds"),
        (["orders.tasks.check_pending_orders", "--countdown", "1e12"], "at most 3600 seconds"),
        (["orders.tasks.check_pending_orders", "--args", "[" * 5000 + "]" * 5000], "nested deeper"),
        (["orders.tasks.check_pending_orders", "--kwargs", '{"a": "\\u0000"}'], "NUL character"),
        (["orders.tasks.check_pending_orders", "--user", "nobody"], "No user is called 'nobody'"),
    ],
)
def test_run_task_rejects_what_the_admin_rejects(arguments: list[str], message: str, broker) -> None:
    with pytest.raises(CommandError, match=message.replace("[", r"\[").replace("(", r"\(")):
        run("run_task", *arguments)
    assert not TaskRun.objects.exists()
    assert all(messages_in(broker, queue) == [] for queue in ("high_priority", "default", "low_priority"))


def test_run_task_refuses_a_user_without_the_permission(broker) -> None:
    UserFactory(username="clerk", is_staff=True)
    with pytest.raises(CommandError, match="needs the 'Can run and retry tasks by hand' permission"):
        run("run_task", "orders.tasks.check_pending_orders", "--user", "clerk")
    assert not TaskRun.objects.exists()


@pytest.mark.rabbitmq
def test_run_task_sends_to_the_chosen_queue_and_prints_the_id(broker, staff) -> None:
    out = run(
        "run_task", "orders.tasks.process_order", "--args", "[7]", "--queue", "low_priority", "--user", staff.username
    )

    run_row = TaskRun.objects.get()
    assert out.strip() == run_row.task_id
    assert (run_row.source, run_row.args, run_row.requested_by) == ("command", [7], staff)
    [message] = messages_in(broker, "low_priority")
    assert (message["headers"]["id"], message["headers"]["argsrepr"]) == (run_row.task_id, "[7]")


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_run_task_waits_for_the_result_of_a_real_worker(worker) -> None:
    out = run("run_task", "orders.tasks.check_pending_orders", "--wait", "--timeout", "30")
    task_id = out.splitlines()[0]
    assert "SUCCESS: 0" in out
    assert TaskResult.objects.get(task_id=task_id).status == "SUCCESS"

    status = run("task_status", task_id)
    assert "task:      orders.tasks.check_pending_orders" in status
    assert "state:     SUCCESS" in status
    assert "sent by:   manage.py (manage.py run_task)" in status


def test_task_status_of_an_unknown_id_is_an_error() -> None:
    with pytest.raises(CommandError, match="Nothing is known about 'no-such-id'"):
        run("task_status", "no-such-id")


def test_task_status_shows_the_arguments_the_object_and_the_retries(customer) -> None:
    from tests.orders.helpers import place, product

    order = place(customer, (product(), 1))
    TaskResult.objects.create(
        task_id="t-1",
        task_name="orders.tasks.process_order",
        status="FAILURE",
        task_args=json.dumps(json.dumps([order.pk])),
        task_kwargs=json.dumps("{}"),
    )
    TaskRun.objects.create(
        task_name="orders.tasks.process_order", task_id="t-2", args=[order.pk], source="retry", retry_of="t-1"
    )

    out = run("task_status", "t-1")
    assert f"arguments: args [{order.pk}], kwargs {{}}" in out
    assert f"about:     orders.Order {order.pk}" in out
    assert "retried as t-2" in out


@pytest.mark.rabbitmq
def test_queue_stats_counts_the_waiting_messages(broker) -> None:
    from orders.tasks import check_pending_orders

    for _ in range(3):
        check_pending_orders.delay()
    out = run("queue_stats")
    assert "default" in out and "       3 waiting" in out.split("default")[1].splitlines()[0]
    assert "workers: no worker answered" in out


@pytest.mark.rabbitmq
def test_queue_depths_come_from_the_broker_and_reading_them_creates_no_queue(broker, settings) -> None:
    from config import celery_app
    from ops.queues import queue_depths
    from orders.tasks import check_pending_orders

    check_pending_orders.delay()
    unknown = f"no-such-queue-{uuid.uuid4().hex[:8]}"

    assert queue_depths() == {"high_priority": 0, "default": 1, "low_priority": 0}
    assert queue_depths([unknown, unknown]) == {unknown: 0}
    if settings.BROKER_IS_RABBITMQ:  # a passive declare created nothing: the queue is still unknown
        with celery_app.connection_for_read() as conn, pytest.raises(conn.channel_errors):
            conn.channel().queue_declare(queue=unknown, passive=True)


def test_beat_status_fails_without_a_fresh_heartbeat_and_passes_with_one(settings) -> None:
    settings.BEAT_HEARTBEAT_MAX_AGE = timedelta(seconds=30)
    with pytest.raises(CommandError, match="beat has never run"):
        run("beat_status")

    now = timezone.now()
    beat = BeatHeartbeat.objects.create(
        node="host:1", role="leader", started_at=now, seen_at=now - timedelta(minutes=5)
    )
    with pytest.raises(CommandError, match="heartbeat is 300s old"):
        run("beat_status")

    BeatHeartbeat.objects.filter(pk=beat.pk).update(seen_at=now)
    assert "beat leader host:1 ticked" in run("beat_status")


def test_purge_results_deletes_only_old_results_in_batches(monkeypatch) -> None:
    from ops.management.commands import purge_results

    monkeypatch.setattr(purge_results, "PURGE_BATCH_SIZE", 3)
    old = timezone.now() - timedelta(days=10)
    for index in range(7):
        TaskResult.objects.create(task_id=f"old-{index}", status="SUCCESS")
    TaskResult.objects.filter(task_id__startswith="old-").update(date_done=old)
    TaskResult.objects.create(task_id="new", status="SUCCESS")

    assert "7 result(s)" in run("purge_results", "--older-than", "7d", "--dry-run")
    assert TaskResult.objects.count() == 8
    assert "Deleted 7 result(s)" in run("purge_results", "--older-than", "7d")
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["new"]


@pytest.mark.parametrize("value", ["soon", "7 days", "-1d", "0d", "inf", "nan", "999999d", "1e300"])
def test_purge_results_rejects_a_bad_age(value: str) -> None:
    with pytest.raises(CommandError, match="--older-than"):
        run("purge_results", "--older-than", value)


@pytest.mark.parametrize(
    "command",
    ["run_task", "task_status", "queue_stats", "beat_status", "purge_results", "setup_schedules", "setup_roles"],
)
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        call_command(command, "--help")
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out
