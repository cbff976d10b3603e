"""With the broker down, an order is still accepted and saved; the sweep sends it once the broker is back."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from orders.models import Order
from tests.orders.helpers import ledger, product, stock_of
from tests.support.broker import (
    ORDER_SWEEP,
    assert_run_now_answers_503,
    order_sweep_schedule,
    sweep_until,
    web_sessions,
)
from tests.support.processes import WorkerProcess, wait_for
from tests.support.servers import FULL_AT_4MB, HttpSession, RedisServer, WebProcess, own_broker_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.rabbitmq
def test_an_order_placed_while_the_broker_is_down_is_saved_pending_and_completed_after_it_returns(
    web_env: dict[str, str], customer
) -> None:
    mug = product(stock=5)
    login = Client()
    login.force_login(customer)
    session_key = login.cookies["sessionid"].value

    with own_broker_server() as broker:
        env = {**web_env, "CELERY_BROKER_URL": broker.url, "ORDER_REQUEUE_AFTER": "1s"}
        with WebProcess(env) as web, WorkerProcess(env, concurrency=1) as worker:
            web.wait_ready()
            worker.wait_started()
            http = HttpSession(web.base_url, session_key)

            broker.stop()
            response = http.request("POST", "/api/orders/", {"lines": [{"sku": mug.sku, "quantity": 1}]})

            assert response.status == 202, response.body
            order = Order.objects.get(pk=response.json()["id"])
            assert order.status == "pending"
            time.sleep(2)  # nothing can process it meanwhile
            order.refresh_from_db()
            assert order.status == "pending"
            assert f"broker unavailable, orders.tasks.process_order[{order.pk}] not sent" in web.output()

            broker.start()  # the message never made it (a Redis comes back empty, RabbitMQ never had it)
            sweep_until(
                broker.url,
                "orders.tasks.check_pending_orders",
                order,
                "completed",
                "the sweep to send the order once the broker is back",
            )

    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4


@pytest.mark.only_on_broker("redis")  # maxmemory and read-only replicas are Redis's refusals
def test_when_redis_refuses_writes_the_web_keeps_the_order_for_the_sweep_and_answers_503_to_a_hand_run_task(
    web_env: dict[str, str], customer, staff
) -> None:
    mug = product(stock=5)
    sweep = order_sweep_schedule()

    # The policy compose runs Redis with (docker-compose.yml): a full Redis refuses writes instead of dropping keys.
    with RedisServer(FULL_AT_4MB) as broker:
        env = {**web_env, "CELERY_BROKER_URL": broker.url, "ORDER_REQUEUE_AFTER": "1s"}
        with WebProcess(env) as web:
            web.wait_ready()
            shopper, admin = web_sessions(web.base_url, customer, staff)
            broker.fill()

            placed = shopper.request("POST", "/api/orders/", {"lines": [{"sku": mug.sku, "quantity": 1}]})

            assert placed.status == 202, placed.body
            order = Order.objects.get(pk=placed.json()["id"])  # type: ignore[index]
            assert order.status == "pending"
            wait_for(
                lambda: f"broker unavailable, orders.tasks.process_order[{order.pk}] not sent" in web.output(),
                10,
                0.1,
                "the refused send logged as one the sweep makes good",
            )
            assert "command not allowed when used memory > 'maxmemory'" in web.output()
            assert_run_now_answers_503(admin, sweep, web.output)

        broker.drop_ballast()
        with WorkerProcess(env, concurrency=1) as worker:
            worker.wait_started()
            sweep_until(
                broker.url, ORDER_SWEEP, order, "completed", "the sweep to send the order once Redis takes writes"
            )

    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4
