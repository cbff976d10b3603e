"""RabbitMQ stopped under load and started again: quorum queues keep every queued message, so no sweep is needed.

The Redis counterpart (test_broker_loss.py) restarts Redis empty and relies on the
database sweeps. Here no beat runs, so no sweep does: every order whose message was
queued completes because RabbitMQ kept the message on disk, and the message of the
task a worker was running when the broker stopped (unacknowledged: tasks acknowledge
late) is delivered again. An email being sent at that moment is finished and
recorded before its task stops (core.interruptions), so its redelivered copy
skips it. An email whose publish the outage refused (its order task had just
committed the order's end) is published again by that order task's second
delivery: the task could not acknowledge either, and its copy finds the order
complete.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
        # Stopped as a first order's end is committed: the moment its email's task is
        # published (after that commit), which the outage may take with it.
        wait_for(lambda: Order.objects.filter(pk__in=ids, status="completed").exists(), 60, 0.05, "a first order done")
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
        # Every email goes out, from its kept message or, for one whose publish the outage
        # refused (the order task that made it could not acknowledge, so it comes back),
        # from that order task's second run, which finds its order complete and publishes
        # the email again. No sweep is needed for either. (A send running when the
        # connection dropped finishes and is recorded before Celery's termination of its
        # task takes effect, so its redelivered copy finds it sent.)
        emails = Notification.objects.filter(subject_object__in=[f"orders.order:{pk}" for pk in ids])
        try:
            wait_for(lambda: emails.filter(status="sent").count() == len(ids), 120, 0.5, "every order's email sent")
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
        wait_until_settled(shop, ids, 120)
        assert worker.alive(), worker.output()[-3000:]
        assert "Unrecoverable error" not in worker.output()

    assert_each_order_done_once(shop, ids)


def test_an_order_finished_while_rabbitmq_is_down_sends_its_email_when_its_task_comes_back(
    process_env: dict[str, str], customer, smtp_server, broker
) -> None:
    """The order's end commits while the broker is down: its email's publish (after the commit) fails.

    A threads worker, which Celery cannot terminate, runs the order to its end
    through the outage. Its message is unacknowledged (it cannot be after the
    connection loss) and comes back once RabbitMQ does: that copy finds the
    order complete and sends the email's task again. No sweep runs.
    """
    from tests.orders.helpers import ledger, place, product

    order = place(customer, (product(stock=5), 1))  # its own task goes to the suite's broker (purged), not this one
    with RabbitMQServer() as server:
        # Each provider call takes 3 s: the broker stops while the shipment is being booked.
        env = {**process_env, "CELERY_BROKER_URL": server.url, "EMAIL_URL": smtp_server.url}
        env |= {"EMAIL_RATE_LIMIT": "off", "PAYMENT_SANDBOX_LATENCY_MS": "3000"}
        with WorkerProcess(env, concurrency=1, pool="threads") as worker:
            worker.wait_started()
            with celery_app.connection_for_write(server.url) as connection:
                task_id = celery_app.send_task("orders.tasks.process_order", [order.pk], connection=connection).id
            wait_for(lambda: Order.objects.get(pk=order.pk).step == "charged", 30, 0.05, "the charge to be recorded")
            server.stop()
            refusal = "broker unavailable, notifications.tasks.send_notification"
            wait_for(lambda: refusal in worker.output(), 60, 0.1, "the email's publish to be refused")
            order.refresh_from_db()
            email = Notification.objects.get(subject_object=f"orders.order:{order.pk}")
            assert (order.status, email.status) == ("completed", "queued")

            server.start()
            wait_for(lambda: smtp_server.inbox.to(customer.email), 90, 0.2, "the email, once RabbitMQ is back")
            wait_for(
                lambda: worker.output().count(f"process_order[{task_id}] received") == 2, 30, 0.1, "the redelivery"
            )
            output = worker.output()
            assert worker.alive(), output[-3000:]

    assert f"notification {email.pk} still queued and untaken: its task is sent again" in output, output[-3000:]
    email.refresh_from_db()
    assert (email.status, email.attempts) == ("sent", 1)
    assert len(smtp_server.inbox.to(customer.email)) == 1
    assert len(ledger(order)) == 1
