"""Publishing on RabbitMQ from processes that are not workers: a countdown on a vhost no worker has used, and refusals.

RabbitMQ only: the suite's settings declare quorum queues, with native delayed
delivery, only for an amqp:// broker, and only RabbitMQ nacks a publish. Each
test makes a vhost of its own (tests/support/broker.py throwaway_vhost).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from celery.exceptions import TimeoutError as ResultTimeout
from django.test import RequestFactory
from django.utils import timezone
from django_celery_results.models import TaskResult
from kombu import Connection, Queue

from config import celery_app
from core import unavailable
from orders.models import Order
from tests.support.broker import (
    DELAY_QUEUES,
    RabbitMQBroker,
    assert_run_now_answers_503,
    order_sweep_schedule,
    project_queues,
    rabbitmqctl,
    reject_every_publish,
    sweep_until,
    take_publishes_again,
    until_refused,
    vhost_name,
    web_sessions,
)
from tests.support.processes import PROJECT_ROOT, WorkerProcess, wait_for
from tests.support.servers import RabbitMQServer, WebProcess

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.only_on_broker("rabbitmq"),
]

COUNTDOWN = 6
SWEEP = "orders.tasks.check_pending_orders"


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def waiting(url: str, queues: tuple[str, ...] | list[str]) -> int:
    broker = RabbitMQBroker(url)
    try:
        return sum(broker.depth(queue) for queue in queues)
    finally:
        broker.close()


def test_on_a_vhost_no_worker_ever_used_a_countdown_waits_in_rabbitmq_and_runs_when_due(
    process_env: dict[str, str], vhost: str
) -> None:
    env = {**process_env, "CELERY_BROKER_URL": vhost}
    sent_at = timezone.now()

    # An operator's command and a service's dispatch.send, each in a process of its own, before any worker started.
    by_hand = manage(env, "run_task", SWEEP, "--countdown", str(COUNTDOWN))
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    by_service = str(uuid.uuid4())
    script = (
        f"from core import dispatch; print(dispatch.send({SWEEP!r}, countdown={COUNTDOWN}, task_id={by_service!r}))"
    )
    sent = manage(env, "shell", "-c", script)
    assert sent.stdout.split()[-1:] == ["True"], sent.stdout + sent.stderr[-3000:]

    # Both wait in RabbitMQ's delay queues, none in a task queue.
    assert (waiting(vhost, DELAY_QUEUES), waiting(vhost, project_queues())) == (2, 0)

    with WorkerProcess(env, concurrency=1) as worker:
        worker.wait_started()
        for task_id in (by_hand.stdout.split()[-1], by_service):
            try:
                celery_app.AsyncResult(task_id).get(timeout=60)
            except ResultTimeout:
                raise AssertionError(f"{task_id} never ran:\n{worker.output()[-4000:]}") from None
            assert TaskResult.objects.get(task_id=task_id).date_done >= sent_at + timedelta(seconds=COUNTDOWN)


def test_a_worker_taking_one_queue_started_first_on_a_new_vhost_binds_every_queue_for_delayed_delivery(
    process_env: dict[str, str], vhost: str
) -> None:
    # Compose runs a worker per queue; the first to start on a new vhost meets queues nobody declared yet.
    with WorkerProcess({**process_env, "CELERY_BROKER_URL": vhost}, queues="default", concurrency=1) as worker:
        worker.wait_started()
        output = worker.output()

    assert "Failed to bind queue" not in output, output[-3000:]
    assert "Failed to setup delayed delivery" not in output, output[-3000:]
    # Kombu binds each queue to its exchange under "#.<routing key>", where delayed messages come back to it.
    listed = rabbitmqctl(
        vhost, "list_bindings", "-p", vhost_name(vhost), "source_name", "destination_name", "routing_key", "-q"
    )
    bindings = {tuple(line.split()) for line in listed.splitlines()}
    assert {("tasks", queue, f"#.{queue}") for queue in project_queues()} <= bindings, listed


def test_a_countdown_the_broker_refuses_is_left_to_the_sweep_like_an_outage(
    process_env: dict[str, str], vhost: str
) -> None:
    # The vhost's user may publish but not declare: no delay exchange can exist, RabbitMQ refuses the publish.
    rabbitmqctl(vhost, "set_permissions", "-p", vhost_name(vhost), "guest", "^$", ".*", ".*")
    env = {**process_env, "CELERY_BROKER_URL": vhost}

    sent = manage(env, "shell", "-c", f"from core import dispatch; print(dispatch.send({SWEEP!r}, countdown=5))")

    assert sent.returncode == 0, sent.stderr[-3000:]
    assert sent.stdout.split()[-1:] == ["False"], sent.stdout + sent.stderr[-3000:]
    assert f"broker unavailable, {SWEEP}[] not sent" in sent.stderr
    assert "NOT_FOUND - no exchange 'celery_delayed_27'" in sent.stderr


def test_a_process_whose_broker_lost_the_delay_exchanges_declares_them_again_after_one_refused_countdown(
    process_env: dict[str, str], vhost: str
) -> None:
    # One process: its first countdown declares the topology; then the broker loses the
    # exchange (as in a node reset), and the process's next countdown is refused.
    script = "\n".join(
        [
            "from config import celery_app",
            "from core import dispatch",
            f"print(dispatch.send({SWEEP!r}, countdown=120))",
            "with celery_app.connection_for_write() as conn:",
            "    conn.default_channel.exchange_delete('celery_delayed_27')",
            f"print(dispatch.send({SWEEP!r}, countdown=120))",
            f"print(dispatch.send({SWEEP!r}, countdown=120))",
        ]
    )
    sent = manage({**process_env, "CELERY_BROKER_URL": vhost}, "shell", "-c", script)

    assert sent.stdout.split()[-3:] == ["True", "False", "True"], sent.stdout + sent.stderr[-3000:]
    assert "NOT_FOUND - no exchange 'celery_delayed_27'" in sent.stderr  # the refused one, left to its sweep
    assert waiting(vhost, DELAY_QUEUES) == 2  # the first and the third wait in the delay queues


def test_while_rabbitmq_takes_no_messages_a_send_gives_up_and_leaves_the_work_to_its_sweep(
    process_env: dict[str, str],
) -> None:
    # A memory alarm on a node of the test's own: RabbitMQ stops reading from every
    # connection that publishes, and confirms nothing, until the alarm clears (a disk
    # alarm does the same). Without a bound, the send below waited for ever.
    with RabbitMQServer() as node:
        rabbitmqctl(node.url, "set_vm_memory_high_watermark", "0.0000001", node=node.record)

        sent = manage(
            {**process_env, "CELERY_BROKER_URL": node.url},
            "shell",
            "-c",
            f"from core import dispatch; print(dispatch.send({SWEEP!r}))",
        )

    assert sent.returncode == 0, sent.stderr[-3000:]
    assert sent.stdout.split()[-1:] == ["False"], sent.stdout + sent.stderr[-3000:]
    assert f"broker unavailable, {SWEEP}[] not sent" in sent.stderr
    assert "TimeoutError" in sent.stderr or "timed out" in sent.stderr  # the confirm that never came


def test_a_publish_rabbitmq_nacks_is_an_outage_503_json_on_the_api_and_a_page_elsewhere(vhost: str) -> None:
    reject_every_publish(vhost, "^full$")
    full = Queue("full", routing_key="full", queue_arguments={"x-queue-type": "quorum"})
    with Connection(vhost, transport_options={"confirm_publish": True}) as conn:
        full.bind(conn.default_channel).declare()
        producer = conn.Producer()
        refusals = [
            until_refused(lambda: producer.publish({"any": "message"}, routing_key="full", retry=False)),  # as is
            until_refused(lambda: celery_app.send_task(SWEEP, connection=conn, queue=full)),  # as Celery raises it
        ]
    assert [type(exc).__name__ for exc in refusals] == ["MessageNacked", "OperationalError"]

    for exc in refusals:
        for path, content_type in (("/api/orders/", "application/json"), ("/orders/", "text/html")):
            request = RequestFactory().post(path)
            response = unavailable.OutageMiddleware(lambda request: None).process_exception(request, exc)  # type: ignore[arg-type,return-value]
            assert response is not None, f"{exc!r} is not an outage"
            assert (response.status_code, response["Retry-After"]) == (503, str(unavailable.RETRY_AFTER_SECONDS))
            assert response["Content-Type"].startswith(content_type)


def test_when_rabbitmq_nacks_the_web_answers_503_or_keeps_the_order_for_the_sweep(
    web_env: dict[str, str], vhost: str, customer, staff
) -> None:
    from tests.orders.helpers import product

    mug = product(stock=5)
    sweep = order_sweep_schedule()
    env = {**web_env, "CELERY_BROKER_URL": vhost, "ORDER_REQUEUE_AFTER": "1s"}

    with WebProcess(env) as web:
        web.wait_ready()
        shopper, admin = web_sessions(web.base_url, customer, staff)
        placed = shopper.request("POST", "/api/orders/", {"lines": [{"sku": mug.sku, "quantity": 1}]})
        assert placed.status == 202, placed.body  # the queues exist now, declared by that first publish
        reject_every_publish(vhost, ".*")
        with celery_app.connection_for_write(vhost) as conn:
            until_refused(lambda: celery_app.send_task(SWEEP, connection=conn))  # the queue has noticed its limit

        # An order placed meanwhile is saved; its message, nacked after the commit, is left to the sweep.
        placed = shopper.request("POST", "/api/orders/", {"lines": [{"sku": mug.sku, "quantity": 1}]})
        assert placed.status == 202, placed.body
        order = Order.objects.get(pk=placed.json()["id"])  # type: ignore[index]
        assert order.status == "pending"
        wait_for(
            lambda: (
                f"orders.tasks.process_order[{order.pk}] not sent; its sweep sends it later: OperationalError('') "
                "from MessageNacked()" in web.output()
            ),
            10,
            0.1,
            "the nacked send logged as one the sweep makes good",
        )
        assert_run_now_answers_503(admin, sweep, web.output)

    take_publishes_again(vhost)
    with WorkerProcess(env, concurrency=1) as worker:
        worker.wait_started()
        sweep_until(vhost, SWEEP, order, "completed", "the sweep to send the order once RabbitMQ takes messages again")
