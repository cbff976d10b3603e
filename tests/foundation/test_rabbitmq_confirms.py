"""Publisher confirms left for the end of a task: a publish returns at once, its confirm or refusal is settled later.

A worker's sends on commit (the order's email, published after the order's last
commit) no longer wait for RabbitMQ's confirm before the task's result is stored:
the worker settles them when the task has ended (core.confirms, core.dispatch).
What RabbitMQ refuses is still reported, by the message it refused, and left to
the sweeps. RabbitMQ only: only there does the project publish with confirms.
Each test has a vhost of its own, on which RabbitMQ nacks every publish to the
queues a policy names (tests/support/broker.py reject_every_publish).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from amqp.exceptions import MessageNacked
from django_celery_results.models import TaskResult
from kombu import Queue

from config import celery_app
from core import confirms
from notifications.models import Notification
from orders.models import Order
from tests.support.broker import (
    RabbitMQBroker,
    reject_every_publish,
    sweep_until,
    take_publishes_again,
    until_refused,
)
from tests.support.processes import PROJECT_ROOT, WorkerProcess, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.only_on_broker("rabbitmq"),
]


EMAIL_TASK = "notifications.tasks.send_notification"


def quorum_queue(name: str) -> Queue:
    return Queue(name, routing_key=name, queue_arguments={"x-queue-type": "quorum"})


def as_task(name: str, *args: int) -> dict:
    """Headers that make a message look like a Celery task's to whoever names it."""
    return {"task": name, "id": name, "argsrepr": repr(args)}


def test_a_publish_left_for_later_returns_at_once_and_its_refusal_is_told_at_the_settling_by_name(vhost: str) -> None:
    reject_every_publish(vhost, "^full$")
    # The project's transport and options (publisher confirms), as every sender gets them.
    with celery_app.connection_for_write(vhost) as connection:
        channel = connection.default_channel
        for queue in (quorum_queue("full"), quorum_queue("kept")):
            queue.bind(channel).declare()
        producer = connection.Producer(channel)

        def publish(queue: str, headers: dict | None = None) -> None:
            producer.publish({"any": "message"}, routing_key=queue, headers=headers, retry=False)

        assert isinstance(until_refused(lambda: publish("full")), MessageNacked)  # a publish that waits: refused

        with confirms.later():
            publish("kept", as_task("first", 1))
            publish("full", as_task("second", 2))  # returns: its nack is read later
            publish("kept", as_task("third", 3))
        # A publish that waits meanwhile waits for its own confirm, and is not blamed for the refusal before it.
        publish("kept", as_task("fourth", 4))

        with pytest.raises(MessageNacked, match=r"^RabbitMQ refused second\(2,\)$"):
            channel.wait_for_confirms()
        channel.wait_for_confirms()  # told once: nothing is left to settle

    broker = RabbitMQBroker(vhost)
    try:
        assert broker.depth("kept") == 3
    finally:
        broker.close()


def test_a_send_on_commit_waits_for_its_confirm_at_once_outside_a_task_and_at_the_tasks_end_inside_one(
    process_env: dict[str, str], vhost: str
) -> None:
    with celery_app.connection_for_write(vhost) as connection:
        celery_app.send_task(EMAIL_TASK, [0], connection=connection)  # declares the emails' queue on the vhost
        reject_every_publish(vhost, "^high_priority$")
        until_refused(lambda: celery_app.send_task(EMAIL_TASK, [0], connection=connection))
    # What a worker's signal handlers do around a task (ops.worker), twice over: a task run eagerly inside another.
    script = f"""
from django.db import transaction
from core import dispatch
with transaction.atomic():
    dispatch.send_on_commit({EMAIL_TASK!r}, [1])
dispatch.confirm_at_end()
dispatch.confirm_at_end()
with transaction.atomic():
    dispatch.send_on_commit({EMAIL_TASK!r}, [2])
print("settled:", dispatch.settle_confirms(), dispatch.settle_confirms())
"""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=PROJECT_ROOT,
        env={**process_env, "CELERY_BROKER_URL": vhost},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    # Outside a task the refusal comes at once, from Celery's publish (and its retries);
    assert f"broker unavailable, {EMAIL_TASK}[1] not sent" in done.stderr, done.stderr[-3000:]
    # inside one, at the end of the outer task, by the message it was for.
    assert done.stdout.split()[-3:] == ["settled:", "True", "False"], done.stdout + done.stderr[-3000:]
    assert f"no confirm for {EMAIL_TASK}[2]; " in done.stderr, done.stderr[-3000:]
    assert f"MessageNacked('RabbitMQ refused {EMAIL_TASK}[2]')" in done.stderr, done.stderr[-3000:]
    assert f"{EMAIL_TASK}[2] not sent" not in done.stderr


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_an_email_rabbitmq_refuses_is_told_after_its_order_tasks_result_in_a_prefork_child_at_once_in_threads(
    process_env: dict[str, str], vhost: str, customer, smtp_server, pool: str
) -> None:
    from tests.orders.helpers import place, product

    env = {**process_env, "CELERY_BROKER_URL": vhost, "EMAIL_URL": smtp_server.url, "EMAIL_RATE_LIMIT": "off"}
    env["NOTIFICATION_REQUEUE_AFTER"] = "1s"
    order = place(customer, (product(stock=5), 1))  # its own task goes to the suite's broker, not this vhost
    if pool == "prefork":  # the confirm is waited for once the task has ended
        refusal = f"broker unavailable, no confirm for {EMAIL_TASK}["
    else:  # a threads worker waits at once (ops.worker.confirm_at_end)
        refusal = f"broker unavailable, {EMAIL_TASK}["
    with celery_app.connection_for_write(vhost) as connection:
        celery_app.send_task(EMAIL_TASK, [0], connection=connection)  # declares the emails' queue on the vhost
        reject_every_publish(vhost, "^high_priority$")
        until_refused(lambda: celery_app.send_task(EMAIL_TASK, [0], connection=connection))
        # A worker for the orders only: RabbitMQ refuses a publish to a queue over its limit only while
        # nobody takes from it, as the emails' worker would.
        with WorkerProcess(env, queues="default", concurrency=1, pool=pool) as worker:
            worker.wait_started()
            task_id = celery_app.send_task("orders.tasks.process_order", [order.pk], connection=connection).id
            wait_for(lambda: refusal in worker.output(), 60, 0.1, f"the refusal told:\n{worker.output()[-3000:]}")
            output = worker.output()

    email = Notification.objects.get(subject_object=f"orders.order:{order.pk}")
    assert (Order.objects.get(pk=order.pk).status, email.status) == ("completed", "queued")
    assert TaskResult.objects.get(task_id=task_id).status == "SUCCESS"
    succeeded = output.find(
        f"id={task_id} state=SUCCESS"
    )  # ops.worker's log, on task_success, once the result is stored
    told = output.index(refusal)
    if pool == "prefork":
        assert -1 < succeeded < told, output[-5000:]
        assert f"{refusal}{email.pk}]; the sweeps send again what was lost: MessageNacked" in output, output[-3000:]
    else:
        assert -1 < told < succeeded, output[-5000:]
        assert f"{refusal}{email.pk}] not sent; its sweep sends it later" in output, output[-3000:]

    # Once RabbitMQ takes messages again, the notifications' sweep sends it.
    take_publishes_again(vhost)
    with WorkerProcess(env, concurrency=1) as worker:
        worker.wait_started()
        sweep_until(vhost, "notifications.tasks.requeue_stale_notifications", email, "sent", "the email, swept")

    email.refresh_from_db()
    assert (email.status, email.attempts) == ("sent", 1)
    assert len(smtp_server.inbox.to(customer.email)) == 1
