"""RabbitMQ stopped under load and started again: quorum queues keep every queued message, so no sweep is needed.

The Redis counterpart (test_broker_loss.py) restarts Redis empty and relies on the
database sweeps. Here no beat runs, so no sweep does: every order whose message was
queued completes because RabbitMQ kept the message on disk, and the message of the
task a worker was running when the broker stopped (unacknowledged: tasks acknowledge
late) is delivered again. An email being sent at that moment is finished and
recorded before its task stops (core.interruptions), so its redelivered copy
skips it. Only an email refused while the broker was down needs the outbox
sweep, and the worker logs the refusal.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import celery_app
from notifications.models import Notification
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
        # A first order done and its email sent, not only its commit seen: the child publishes
        # the email right after that commit, and a broker stopped at that very moment would
        # take the publish with it (see the note on issue 18).
        wait_for(lambda: Notification.objects.filter(status="sent").exists(), 60, 0.1, "a first order's email sent")
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
        # Every email goes out from its kept message, except one that a finishing task
        # tried to send while the broker was down: never queued, it waits for the outbox
        # sweep, and the worker logged the refusal. (A send running when the connection
        # dropped finishes and is recorded before Celery's termination of its task takes
        # effect, so its redelivered copy finds it sent.) Emails queued behind the orders
        # are still being sent when the last order is final, so wait for one or the other.
        emails = Notification.objects.filter(subject_object__in=[f"orders.order:{pk}" for pk in ids])

        def refused() -> bool:
            return "broker unavailable" in worker.output()

        try:
            wait_for(
                lambda: emails.filter(status="sent").count() == len(ids) or refused(),
                120,
                0.5,
                "every email sent from its kept message, or a refused one logged",
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
        if refused():
            with celery_app.connection_for_write(server.url) as connection:
                celery_app.send_task("notifications.tasks.requeue_stale_notifications", connection=connection)
        wait_until_settled(shop, ids, 120)
        assert worker.alive(), worker.output()[-3000:]
        assert "Unrecoverable error" not in worker.output()

    assert_each_order_done_once(shop, ids)
