"""manage.py active_tasks (what each worker runs, and on what) and manage.py purge_queue, on every broker."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_results.models import TaskResult

from ops import queues
from tests.orders.helpers import place, product
from tests.support import tasks
from tests.support.processes import PROJECT_ROOT, WorkerProcess, free_port, wait_for

# bin/test's RabbitMQ (a vhost of its own per run), or the local server's default vhost.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def manage(env: dict[str, str], *args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Publishes `count` no-op tasks to a queue through the project's settings, as web would; on
# RabbitMQ the project's quorum queues are declared first, as a worker would.
ENQUEUE = """
import sys, django
django.setup()
from django.conf import settings
from config import celery_app
with celery_app.connection_for_write() as conn:
    for queue in settings.CELERY_TASK_QUEUES:
        queue(conn.default_channel).declare()
    for _ in range(int(sys.argv[2])):
        celery_app.send_task("tests.support.tasks.succeeds", queue=sys.argv[1], connection=conn)
"""


@pytest.fixture(params=["redis", "rabbitmq", "file"])
def broker_env(request: pytest.FixtureRequest, tmp_path: Path, broker) -> dict[str, str]:
    """The environment of a command on each supported broker: the suite's Redis, vhost s2, a file broker."""
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    if request.param == "rabbitmq":
        env["CELERY_BROKER_URL"] = RABBITMQ_URL
    elif request.param == "file":
        env["CELERY_BROKER_URL"] = "filesystem://localhost/"
    emptied = manage(env, "purge_queue", "low_priority", "--yes")  # leftovers of an earlier run on vhost s2
    assert emptied.returncode == 0, emptied.stderr
    return env


def test_purge_queue_shows_the_count_asks_and_purges_only_when_told_on_every_broker(broker_env) -> None:
    enqueued = subprocess.run(
        [sys.executable, "-c", ENQUEUE, "low_priority", "3"], cwd=PROJECT_ROOT, env=broker_env, timeout=120
    )
    assert enqueued.returncode == 0

    declined = manage(broker_env, "purge_queue", "low_priority", answer="no\n")
    assert declined.returncode == 0, declined.stderr
    assert "low_priority holds 3 waiting message(s)." in declined.stdout
    assert "Cancelled; nothing was purged." in declined.stdout

    confirmed = manage(broker_env, "purge_queue", "low_priority", answer="yes\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "low_priority holds 3 waiting message(s)." in confirmed.stdout
    assert "Purged 3 message(s) from low_priority." in confirmed.stdout

    again = manage(broker_env, "purge_queue", "low_priority", "--yes")
    assert "low_priority is empty; nothing to purge." in again.stdout


@pytest.mark.rabbitmq
def test_purge_queue_without_an_answer_or_yes_purges_nothing(broker) -> None:
    enqueued = subprocess.run([sys.executable, "-c", ENQUEUE, "default", "2"], cwd=PROJECT_ROOT, timeout=120)
    assert enqueued.returncode == 0

    closed = manage(dict(os.environ), "purge_queue", "default", answer="")

    assert closed.returncode == 1
    assert "CommandError: no answer to the confirmation (stdin is closed); pass --yes in scripts." in closed.stderr
    assert queues.queue_depths(["default"]) == {"default": 2}
    assert "Purged 2 message(s)" in manage(dict(os.environ), "purge_queue", "default", "--yes").stdout
    assert queues.queue_depths(["default"]) == {"default": 0}


@pytest.mark.parametrize("queue", ["celery", "test@localhost.dq2", "high_priority "])
def test_purge_queue_refuses_a_queue_that_is_not_the_projects(queue: str) -> None:
    with pytest.raises(CommandError, match="is not one of this project's queues; purge one of high_priority, default"):
        call_command("purge_queue", queue, "--yes")


@pytest.mark.parametrize("command", [("purge_queue", "default", "--yes"), ("active_tasks",)])
def test_the_commands_say_the_broker_is_down_without_a_traceback(command: tuple[str, ...]) -> None:
    env = {**os.environ, "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}

    result = manage(env, *command)

    assert result.returncode == 1
    assert "CommandError: cannot reach the broker" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_active_tasks_shows_each_workers_running_task_and_the_order_it_works_on(
    process_env: dict[str, str], broker, customer, tmp_path: Path
) -> None:
    order = place(customer, (product(stock=5), 1))
    release = tmp_path / "release"
    with WorkerProcess(process_env, queues="low_priority", extra=tasks.INCLUDE) as worker:
        worker.wait_started()
        sent = tasks.works_on_order.apply_async((order.pk, str(release)), queue="low_priority")
        wait_for(
            lambda: TaskResult.objects.filter(task_id=sent.id, status="STARTED").exists(),
            60,
            0.2,
            "the task to start",
        )

        out = StringIO()
        call_command("active_tasks", "--timeout", "5", stdout=out)

        release.touch()
        assert sent.get(timeout=60) == "done"

    listing = out.getvalue()
    assert f"{worker.nodename}: 1 running" in listing
    assert f"tests.support.tasks.works_on_order[{sent.id}] (queue low_priority, for " in listing
    assert f"on orders.Order {order.pk} {str(order)!r}" in listing


@pytest.mark.rabbitmq
def test_active_tasks_says_so_when_no_worker_answers(broker) -> None:
    out = StringIO()
    call_command("active_tasks", "--timeout", "0.5", stdout=out)
    assert "No worker answered" in out.getvalue()


def test_active_tasks_refuses_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(CommandError, match="--timeout must be more than zero"):
        call_command("active_tasks", "--timeout", "0")


@pytest.mark.parametrize(("command", "says"), [("active_tasks", "what each worker runs now"), ("purge_queue", "--yes")])
def test_both_commands_have_help(command: str, says: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        call_command(command, "--help")
    assert exited.value.code == 0
    assert says in " ".join(capsys.readouterr().out.split())
