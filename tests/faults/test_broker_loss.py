"""Redis stopped under load, with the workers kept running, then restarted empty: nothing is lost or done twice."""

from __future__ import annotations

import time

import pytest

from orders.models import Order
from tests.faults.helpers import Customers, Shop, assert_each_order_done_once, wait_until_settled
from tests.support.broker import sweep_until
from tests.support.processes import BeatProcess, WorkerProcess, wait_for
from tests.support.servers import WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_redis_stopped_under_load_and_restarted_empty_loses_nothing_and_the_same_workers_go_on(shop: Shop) -> None:
    with (
        WebProcess(shop.env) as web,
        WorkerProcess.shipped(shop.env, "worker-default") as first,
        WorkerProcess.shipped(shop.env, "worker-high") as second,
        BeatProcess(shop.env) as beat,
    ):
        web.wait_ready()
        workers = [first.wait_started(), second.wait_started()]
        customers = Customers(web.base_url, shop.session_key, shop.skus, clients=3, orders_each=15).start()
        wait_for(lambda: customers.count() >= 10, 60, 0.05, "the first orders")

        shop.redis.stop()  # every message waiting in Redis is lost with it
        wait_for(lambda: all("Connection to broker lost" in w.output() for w in workers), 30, 0.1, "workers to notice")
        time.sleep(3)  # customers go on ordering while the broker is away
        shop.redis.start()

        ids = customers.wait()
        wait_until_settled(shop, ids)
        for worker in workers:
            assert worker.alive(), f"a worker exited:\n{worker.output()[-3000:]}"
            assert "Unrecoverable error" not in worker.output()
        assert beat.alive(), beat.output()[-3000:]

    assert set(customers.answers) == {202}, customers.answers  # the broker's outage is no customer's problem
    assert_each_order_done_once(shop, ids)


def test_a_worker_holding_a_task_when_redis_stops_stays_up_and_consumes_again_once_redis_is_back(shop: Shop) -> None:
    # A thread is busy for seconds, so the worker holds an unacknowledged message
    # while it waits on Redis for the next one: the state in which Celery 5.7.0
    # used to exit (see ops/broker.py). The workers are the shipped ones.
    env = {**shop.env, "PAYMENT_SANDBOX_LATENCY_MS": "2000", "ORDER_LEASE_TIMEOUT": "4s"}
    with (
        WebProcess(env) as web,
        WorkerProcess.shipped(env, "worker-default") as worker,
        WorkerProcess.shipped(env, "worker-high") as emails,
    ):
        web.wait_ready()
        worker.wait_started()
        emails.wait_started()
        [held] = Customers(web.base_url, shop.session_key, shop.skus, clients=1, orders_each=1).start().wait()
        wait_for(lambda: Order.objects.get(pk=held).status == "processing", 30, 0.05, "the order to be processing")

        shop.redis.stop()
        wait_for(lambda: "Cannot connect to" in worker.output() or not worker.alive(), 30, 0.1, "a reconnect attempt")
        assert worker.alive(), worker.output()[-4000:]
        shop.redis.start()

        later = Customers(web.base_url, shop.session_key, shop.skus, clients=2, orders_each=2).start().wait()
        wait_until_settled(shop, later, 60)  # taken by the same worker process, after its reconnect
        # The held order's message went with the old Redis; the sweep that beat runs brings it back.
        sweep_until(
            shop.redis.url,
            "orders.tasks.check_pending_orders",
            Order.objects.get(pk=held),
            "completed",
            "the sweep to finish the order whose message was lost",
        )
        wait_until_settled(shop, [held, *later], 60)
        assert worker.alive()
        assert "Unrecoverable error" not in worker.output()
    assert_each_order_done_once(shop, [held, *later])
