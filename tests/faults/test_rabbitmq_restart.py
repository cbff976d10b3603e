"""RabbitMQ stopped under load and started again: quorum queues keep every queued message, so no sweep is needed.

The Redis counterpart (test_broker_loss.py) restarts Redis empty and relies on the
database sweeps. Here no beat runs, so no sweep does: every order whose message was
queued completes because RabbitMQ kept the message on disk, and the message of the
task a worker was running when the broker stopped (unacknowledged: tasks acknowledge
late) is delivered again. Only two kinds of email need the outbox sweep, and the
worker logs each: one refused while the broker was down, and one whose send the
connection loss cut short (its row waits for its lease; see the test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.utils import timezone

from config import celery_app
from notifications.models import Notification
from orders.models import Order
from tests.faults.helpers import Customers, Shop, assert_each_order_done_once, wait_until_settled
from tests.support.broker import RabbitMQBroker
from tests.support.processes import WorkerProcess, wait_for
from tests.support.servers import RabbitMQServer, WebProcess

# RabbitMQ only: the suite's settings declare quorum queues only for an amqp:// broker.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.only_on_broker("rabbitmq"),
]


@pytest.fixture
def rabbitmq_shop(web_env: dict[str, str], smtp_server, customer) -> Iterator[Shop]:
    with RabbitMQServer() as server:
        yield Shop.create(web_env, server, smtp_server, customer)


def waiting_in(url: str, queue: str) -> int:
    broker = RabbitMQBroker(url)
    try:
        return broker.depth(queue)
    finally:
        broker.close()


def test_rabbitmq_stopped_under_load_and_started_again_keeps_every_queued_order_without_a_sweep(
    rabbitmq_shop: Shop,
) -> None:
    shop = rabbitmq_shop
    server = shop.redis  # the shop's broker server; here a RabbitMQ node of the test's own
    # One slow worker process, so that a backlog waits in the queue when the broker stops.
    env = {**shop.env, "PAYMENT_SANDBOX_LATENCY_MS": "400"}
    with WebProcess(env) as web, WorkerProcess(env, concurrency=1) as worker:
        web.wait_ready()
        worker.wait_started()
        ids = Customers(web.base_url, shop.session_key, shop.skus, clients=2, orders_each=10, pause=0).start().wait()
        wait_for(lambda: Order.objects.filter(pk__in=ids, status="completed").exists(), 60, 0.1, "a first order done")
        queued = waiting_in(server.url, "default")
        assert queued >= 3, f"too little backlog to show anything: {queued} waiting"

        server.stop()
        wait_for(lambda: "Connection to broker lost" in worker.output(), 30, 0.1, "the worker to notice")
        server.start()  # the same node and data folder: the quorum queues come back with their messages

        # No beat runs, so nothing is swept: the orders complete from the kept messages alone.
        wait_for(
            lambda: all(order.is_final for order in shop.orders(ids)), 180, 0.5, f"the {len(ids)} orders to be final"
        )
        assert {order.status for order in shop.orders(ids)} == {"completed"}
        # Every email goes out from its kept message, except two kinds, each logged by the
        # worker, that wait for the outbox sweep: one that a finishing task tried to send
        # while the broker was down (never queued), and one whose send was running when the
        # connection dropped. Celery terminates such a task (acks_late; config/settings.py
        # CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS), and its redelivered
        # copy leaves the row to its claim's lease (outbox.claimable): the email may have
        # reached the server. Emails queued behind the orders are still being sent when the
        # last order is final, so wait for all sent or one of those.
        emails = Notification.objects.filter(subject_object__in=[f"orders.order:{pk}" for pk in ids])

        def refused() -> bool:
            return "broker unavailable" in worker.output()

        def cut_short() -> list[str]:
            output = worker.output()
            return [
                task_id
                for task_id in emails.filter(status="sending").values_list("lease_owner", flat=True)
                if f"send_notification[{task_id}] cannot be acknowledged after a connection loss" in output
            ]

        try:
            wait_for(
                lambda: emails.filter(status="sent").count() == len(ids) or refused() or cut_short(),
                120,
                0.5,
                "every email sent from its kept message, or a refused or cut-short one logged",
            )
        except AssertionError:
            unsent = list(
                emails.exclude(status="sent").values(
                    "pk", "subject_object", "status", "attempts", "last_error", "lease_owner", "updated_at"
                )
            )
            about = [line for line in worker.output().splitlines() if "send_notification" in line or "rror" in line]
            # And the worker's last lines: a task that never ended (a publish waiting for a
            # confirm that never came, say) shows as "received" with no "succeeded" after it.
            raise AssertionError(
                f"unsent: {unsent}\nworker lines: {about[-60:]}\nlast lines:\n{worker.output()[-5000:]}"
            ) from None
        if refused() or cut_short():
            # The sweep takes a row being sent once its lease has expired (10 s here).
            wait_for(
                lambda: not emails.filter(status="sending", lease_expires_at__gte=timezone.now()).exists(),
                60,
                0.5,
                "the cut-short send's lease to expire",
            )
            with celery_app.connection_for_write(server.url) as connection:
                celery_app.send_task("notifications.tasks.requeue_stale_notifications", connection=connection)
        wait_until_settled(shop, ids, 120)
        assert worker.alive(), worker.output()[-3000:]
        assert "Unrecoverable error" not in worker.output()

    assert_each_order_done_once(shop, ids)
