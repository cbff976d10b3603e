"""PostgreSQL restarted under running workers: every worker process, the main one included, comes back to work.

And PostgreSQL crashed (pg_ctl stop -m immediate), which loses the commits that did
not wait for the disk: the orders resume from their last durable checkpoint.

The orders and email workers ship on the threads pool: the first test runs them
as shipped. Killing pool children is a prefork fault (reports and campaigns run
on prefork), so the two tests after it keep prefork workers; on threads, its
equivalent is the whole worker killed, which the first test does.
"""

from __future__ import annotations

import os
import signal

import pytest

from orders.models import Order
from tests.faults.helpers import Customers, Shop, assert_each_order_done_once, wait_until_settled
from tests.support.processes import BeatProcess, WorkerProcess, wait_for
from tests.support.servers import PostgresServer, WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def kill_busy_children(shop: Shop, worker: WorkerProcess, ids: list[int]) -> None:
    """SIGKILL the worker's children while each is in the middle of an order, so the main process retries them."""
    wait_for(
        lambda: Order.objects.using(shop.db).filter(pk__in=ids, status="processing").count() == len(ids),
        30,
        0.05,
        f"orders {ids} to be processing",
    )
    for child in worker.child_pids():
        os.kill(child, signal.SIGKILL)


def test_postgresql_restarted_under_load_on_the_shipped_workers_loses_nothing_and_a_worker_killed_after_is_recovered(
    shop: Shop, own_postgres: PostgresServer
) -> None:
    shop.move_to(own_postgres)
    env = {**shop.env, "PAYMENT_SANDBOX_LATENCY_MS": "200"}  # threads are mostly waiting on the gateway
    with (
        WebProcess(env) as web,
        WorkerProcess.shipped(env, "worker-default") as orders,
        WorkerProcess.shipped(env, "worker-high") as emails,
        BeatProcess(env) as beat,
    ):
        web.wait_ready()
        orders.wait_started()
        emails.wait_started()
        customers = Customers(web.base_url, shop.session_key, shop.skus, clients=3, orders_each=15).start()

        def after(placed: int) -> None:
            wait_for(lambda: customers.count() >= placed, 60, 0.05, f"{placed} orders placed")

        after(10)
        shop.restart_postgres(own_postgres)  # every thread's connection dies, mid-order for some
        after(25)
        orders.kill_group()  # the whole worker lost: its leases expire and the sweep resends its orders
        with WorkerProcess.shipped(env, "worker-default") as replacement:
            replacement.wait_started()
            ids = customers.wait()
            wait_until_settled(shop, ids)
            outputs = replacement.output() + emails.output()
        for process in (emails, beat):
            assert process.alive(), process.output()[-3000:]
    assert_each_order_done_once(shop, ids)
    assert "Unrecoverable error" not in outputs


def test_postgresql_crashed_under_load_takes_back_only_checkpoints_that_are_redone_once(
    shop: Shop, own_postgres: PostgresServer
) -> None:
    """A crash, not a restart: the commits that did not wait for the disk (core.db) since the last one that did are lost.

    Orders in flight then resume from their last commit that waited, with the same
    idempotency keys: none is charged twice, none loses its stock or its email. The
    emails are sent after the crash, so that none is in the middle of its SMTP
    conversation when it happens (one that is may go twice, as with any outbox).
    """
    shop.move_to(own_postgres)
    env = {**shop.env, "PAYMENT_SANDBOX_LATENCY_MS": "20"}
    with (
        WebProcess(env) as web,
        WorkerProcess(env, queues="default") as orders,
        BeatProcess(env) as beat,
    ):
        web.wait_ready()
        orders.wait_started()
        customers = Customers(web.base_url, shop.session_key, shop.skus, clients=3, orders_each=12).start()
        wait_for(lambda: customers.count() >= 12, 60, 0.05, "12 orders placed")
        shop.restart_postgres(own_postgres, mode="immediate")
        ids = customers.wait()
        with WorkerProcess(env, queues="high_priority") as emails:
            emails.wait_started()
            wait_until_settled(shop, ids)
        for process in (orders, beat):
            assert process.alive(), process.output()[-3000:]
    assert_each_order_done_once(shop, ids)


def test_a_worker_whose_children_die_after_postgresql_restarted_goes_on_processing(
    shop: Shop, own_postgres: PostgresServer
) -> None:
    shop.move_to(own_postgres)
    # Each order spends seconds at the gateway, so both children are busy when they are killed.
    env = {**shop.env, "PAYMENT_SANDBOX_LATENCY_MS": "1500"}
    with WebProcess(env) as web, WorkerProcess(env, concurrency=2) as worker:
        web.wait_ready()
        worker.wait_started()

        def place(count: int) -> list[int]:
            return Customers(web.base_url, shop.session_key, shop.skus, clients=count, orders_each=1).start().wait()

        # A child lost: the main process records the retry, on a database connection of its own.
        first = place(2)
        kill_busy_children(shop, worker, first)
        wait_until_settled(shop, first, 60)

        shop.restart_postgres(own_postgres)

        # Lost again, now that any connection the main process kept is dead; the children
        # forked to replace them start from the main process's state.
        second = place(2)
        kill_busy_children(shop, worker, second)
        third = place(4)
        wait_until_settled(shop, first + second + third, 90)
        output = worker.output()
    assert_each_order_done_once(shop, first + second + third)
    assert "Pool callback raised exception" not in output
    assert "DjangoWorkerFixup.on_worker_process_init raised" not in output


def test_postgresql_restarted_under_load_then_worker_children_replaced_loses_nothing_and_workers_go_on(
    shop: Shop, own_postgres: PostgresServer
) -> None:
    shop.move_to(own_postgres)
    env = {**shop.env, "PAYMENT_SANDBOX_LATENCY_MS": "200"}  # children are mostly busy when they are killed
    with (
        WebProcess(env) as web,
        WorkerProcess(env) as first,
        WorkerProcess(env) as second,
        BeatProcess(env) as beat,
    ):
        web.wait_ready()
        workers = [first.wait_started(), second.wait_started()]
        customers = Customers(web.base_url, shop.session_key, shop.skus, clients=3, orders_each=15).start()

        def after(placed: int) -> None:
            wait_for(lambda: customers.count() >= placed, 60, 0.05, f"{placed} orders placed")

        after(5)
        for worker in workers:  # lost children: each main process now has used the database
            for child in worker.child_pids():
                os.kill(child, signal.SIGKILL)
        after(15)
        shop.restart_postgres(own_postgres)  # web, workers and beat lose every connection
        after(25)
        for worker in workers:  # replaced again, forked from main processes that lived through the restart
            for child in worker.child_pids():
                os.kill(child, signal.SIGKILL)

        ids = customers.wait()
        wait_until_settled(shop, ids)
        for process in (*workers, beat):
            assert process.alive(), process.output()[-3000:]
        outputs = "".join(worker.output() for worker in workers)
    assert_each_order_done_once(shop, ids)
    assert "Pool callback raised exception" not in outputs
    assert "DjangoWorkerFixup.on_worker_process_init raised" not in outputs
