"""The order pipeline end to end: real worker processes, real Redis, real PostgreSQL."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client

from config import celery_app
from orders.models import Order, Payment
from tests.factories import StaffFactory
from tests.orders.helpers import fault, ledger, place, product, stock_of
from tests.support.broker import sweep_until, wait_until_idle
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def status_of(order: Order, timeout: float = 60, until: tuple[str, ...] = Order.FINAL_STATUSES) -> Order:
    def reached() -> Order | None:
        order.refresh_from_db()
        return order if order.status in until else None

    return wait_for(reached, timeout, 0.1, f"order {order.pk} to reach {until}")  # type: ignore[return-value]


@pytest.mark.rabbitmq
def test_an_order_placed_over_http_is_completed_by_the_worker(start_worker_process, customer_client) -> None:
    start_worker_process()
    mug = product(stock=5, price="12.50")

    response = customer_client.post(
        "/api/orders/", {"lines": [{"sku": mug.sku, "quantity": 2}]}, content_type="application/json"
    )
    assert response.status_code == 202

    def completed() -> dict | None:
        body = customer_client.get(response["Location"]).json()
        return body if body["status"] == "completed" else None

    body = wait_for(completed, 60, 0.2, "the status endpoint to show completed")
    assert (body["step"], body["total"]) == ("notified", "25.00")
    order = Order.objects.get(pk=body["id"])
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 3


@pytest.mark.rabbitmq
def test_a_transient_gateway_error_is_retried_and_the_order_completes(start_worker_process, customer) -> None:
    start_worker_process()
    with transaction.atomic():  # the fault is in place before the task is sent (on commit)
        order = place(customer, (product(), 1))
        fault(order, "charge", "transient", times=2)

    assert status_of(order).status == "completed"
    assert len(ledger(order)) == 1
    assert order.events.filter(kind="retry").count() == 2
    assert order.events.filter(kind="attempt").values("task_id").distinct().count() == 1


def test_a_decline_fails_the_order_with_its_reason_and_releases_the_stock(start_worker_process, customer) -> None:
    start_worker_process()
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 2))
        fault(order, "charge", "decline")

    assert status_of(order).status == "failed"
    assert "declined" in order.failure_reason
    assert stock_of(mug) == 5
    assert ledger(order) == []


def test_a_failure_after_the_charge_is_refunded_and_can_be_replayed_from_the_admin(
    start_worker_process, customer
) -> None:
    start_worker_process()
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 2))
        fault(order, "ship", "decline")
    assert status_of(order).status == "failed"
    assert order.failure_reason.startswith("Shipping refused")
    assert len(ledger(order, "charge")) == len(ledger(order, "refund")) == 1
    assert stock_of(mug) == 5

    admin = Client()
    admin.force_login(StaffFactory())
    response = admin.post(
        "/admin/orders/order/", {"action": "retry_failed", "_selected_action": [order.pk]}, follow=True
    )
    assert "Replaying 1 failed order(s)" in response.content.decode()

    assert status_of(order).status == "completed"
    assert order.replays == 1
    assert len(ledger(order, "charge")) == 2 and len(ledger(order, "refund")) == 1  # old charge refunded, new kept
    assert stock_of(mug) == 3


@pytest.mark.rabbitmq
def test_the_same_order_delivered_twice_and_on_two_workers_is_charged_once(
    start_worker_process, customer, broker
) -> None:
    start_worker_process(PAYMENT_SANDBOX_LATENCY_MS="300")
    start_worker_process(PAYMENT_SANDBOX_LATENCY_MS="300")
    mug = product(stock=10)
    with transaction.atomic():
        order = place(customer, (mug, 3))
    process_order = celery_app.tasks["orders.tasks.process_order"]
    for _ in range(2):
        process_order.apply_async((order.pk,), task_id="duplicate-delivery")  # the same message, twice
    process_order.delay(order.pk)  # and another task for the same order
    process_order.delay(order.pk)

    assert status_of(order).status == "completed"
    wait_until_idle(broker, "every copy of the task")
    assert len(ledger(order)) == 1
    assert Payment.objects.filter(order=order).count() == 1
    assert stock_of(mug) == 7


def test_two_orders_racing_for_the_last_unit_one_completes_and_the_other_is_never_charged(
    start_worker_process, customer
) -> None:
    start_worker_process(concurrency=2)
    start_worker_process(concurrency=2)
    last = product(stock=1)
    with transaction.atomic():
        orders = [place(customer, (last, 1)) for _ in range(2)]

    statuses = sorted(status_of(order).status for order in orders)
    assert statuses == ["completed", "failed"]
    [winner] = [order for order in orders if order.status == "completed"]
    [loser] = [order for order in orders if order.status == "failed"]
    assert loser.failure_reason.startswith(f"Out of stock: not enough {last.sku}")
    assert ledger(loser) == [] and not loser.payments.exists()
    assert len(ledger(winner)) == 1
    assert stock_of(last) == 0


@pytest.mark.rabbitmq
def test_a_worker_child_killed_mid_charge_is_retried_and_the_order_charged_once(start_worker_process, customer) -> None:
    worker = start_worker_process(concurrency=1, PAYMENT_SANDBOX_LATENCY_MS="3000")
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 1))
    wait_for(lambda: Payment.objects.filter(order=order).exists(), 30, 0.05, "the payment intent")

    [child] = worker.child_pids()
    signal_sent = time.monotonic()
    os.kill(child, signal.SIGKILL)

    assert status_of(order).status == "completed"
    assert time.monotonic() - signal_sent < 30  # retried after seconds, not the 180 s default
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4
    attempts = order.events.filter(kind="attempt")
    assert attempts.count() == 2 and attempts.values("task_id").distinct().count() == 1


def test_a_worker_killed_right_after_the_gateway_charged_does_not_charge_twice(start_worker_process, customer) -> None:
    start_worker_process(concurrency=1)
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 1))
        fault(order, "charge", "crash_after")

    assert status_of(order).status == "completed"
    assert len(ledger(order)) == 1
    assert order.events.filter(kind="attempt").count() == 2
    assert stock_of(mug) == 4


@pytest.mark.rabbitmq
def test_a_whole_worker_killed_mid_order_is_recovered_by_the_sweep_once_the_lease_expires(
    start_worker_process, customer
) -> None:
    timing = {"PAYMENT_SANDBOX_LATENCY_MS": "2000", "ORDER_LEASE_TIMEOUT": "4s", "ORDER_REQUEUE_AFTER": "1s"}
    doomed = start_worker_process(concurrency=1, **timing)
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 1))
    wait_for(lambda: Payment.objects.filter(order=order).exists(), 30, 0.05, "the payment intent")
    doomed.kill_group()  # the machine is gone: no retry message, the delivery sits unacked (Redis) or returns (RabbitMQ)

    start_worker_process(concurrency=1, **timing)
    order.refresh_from_db()
    assert order.status == "processing"

    sweep_until(
        settings.CELERY_BROKER_URL,
        "orders.tasks.check_pending_orders",
        order,
        "completed",
        "the sweep to bring the order back",
        timeout=60,
    )
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4
    if not settings.BROKER_IS_RABBITMQ:
        assert order.events.filter(kind="requeued").exists()
    # On RabbitMQ the dead worker's connection closes and its unacknowledged message is
    # delivered again at once: the broker may bring the order back before the sweep
    # does, and the lease keeps the two to one run.


# --- the shipped worker configuration (compose's worker-default and worker-high) ------------------


def test_a_hung_provider_call_ends_at_its_timeout_and_the_order_is_retried_on_the_shipped_pool(
    start_shipped_workers, customer
) -> None:
    # The threads pool enforces no task time limit: only the call's own timeout ends it.
    [orders_worker, _] = start_shipped_workers(PROVIDER_TIMEOUT="2s")
    assert "-P threads" in " ".join(orders_worker.args)  # what compose ships for orders
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 1))
        fault(order, "charge", "hang")

    assert status_of(order, timeout=90).status == "completed"
    [retry] = order.events.filter(kind="retry")
    assert "no answer within 2s" in retry.message
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4
    attempts = order.events.filter(kind="attempt")
    assert attempts.count() == 2 and attempts.values("task_id").distinct().count() == 1


def test_a_whole_shipped_worker_killed_mid_order_is_recovered_by_the_sweep_and_charged_once(
    start_shipped_workers, customer
) -> None:
    # A threads worker has no child to lose: the equivalent of a child SIGKILLed is the whole worker.
    timing = {"PAYMENT_SANDBOX_LATENCY_MS": "2000", "ORDER_LEASE_TIMEOUT": "4s", "ORDER_REQUEUE_AFTER": "1s"}
    [doomed] = start_shipped_workers("worker-default", **timing)
    mug = product(stock=5)
    with transaction.atomic():
        order = place(customer, (mug, 1))
    wait_for(lambda: Payment.objects.filter(order=order).exists(), 30, 0.05, "the payment intent")
    doomed.kill_group()

    start_shipped_workers("worker-default", **timing)

    sweep_until(
        settings.CELERY_BROKER_URL,
        "orders.tasks.check_pending_orders",
        order,
        "completed",
        "the sweep to bring the order back",
        timeout=60,
    )
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4


def test_the_shipped_orders_pool_at_full_concurrency_stays_within_its_database_connection_bound(
    start_shipped_workers, customer
) -> None:
    """Every thread keeps one connection, and the worker no more than that: concurrency + 1 (README "Worker pools")."""
    from django.db import connection

    from tests.support.processes import shipped_worker

    concurrency = shipped_worker("worker-default")["concurrency"]
    [worker] = start_shipped_workers("worker-default", PAYMENT_SANDBOX_LATENCY_MS="1000")
    mug = product(stock=10_000)
    with transaction.atomic():
        orders = [place(customer, (mug, 1)) for _ in range(2 * concurrency)]

    def connections_of_others() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    peak_busy = peak_connections = 0
    deadline = time.monotonic() + 120
    while Order.objects.filter(status="completed").count() < len(orders):
        assert time.monotonic() < deadline, "the orders did not complete"
        peak_busy = max(peak_busy, Order.objects.filter(status="processing").count())
        peak_connections = max(peak_connections, connections_of_others())
        time.sleep(0.05)

    assert peak_busy == concurrency  # every thread had an order at once
    assert concurrency <= peak_connections <= concurrency + 1
    assert "too many clients" not in worker.output()
    assert all(len(ledger(order)) == 1 for order in orders)
