"""The web process during a database or broker outage: 503 with Retry-After, never 500, and fine right after."""

from __future__ import annotations

import pytest
from django.test import Client
from django_celery_beat.models import PeriodicTask

from tests.faults.helpers import Customers, Shop
from tests.support.servers import HttpSession, PostgresServer, Response, WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def assert_unavailable(response: Response, *, json: bool) -> None:
    assert response.status == 503, (response.status, response.body[:300])
    assert int(response.headers["Retry-After"]) > 0
    if json:
        assert "unavailable" in response.json()["error"]  # type: ignore[index]
    else:
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"Back in a moment" in response.body and b"Traceback" not in response.body


def test_while_postgresql_is_down_web_answers_503_and_the_first_request_after_it_is_served(
    shop: Shop, own_postgres: PostgresServer
) -> None:
    shop.move_to(own_postgres)
    with WebProcess(shop.env, workers=2) as web:
        web.wait_ready()
        http = HttpSession(web.base_url, shop.session_key)
        [order] = Customers(web.base_url, shop.session_key, shop.skus, clients=1, orders_each=1).start().wait()
        for _ in range(4):  # both gunicorn processes hold a connection now
            assert http.request("GET", f"/api/orders/{order}/").status == 200

        own_postgres.stop()
        assert_unavailable(http.request("GET", f"/api/orders/{order}/"), json=True)
        assert_unavailable(
            http.request("POST", "/api/orders/", {"lines": [{"sku": shop.skus[0], "quantity": 1}]}), json=True
        )
        assert_unavailable(http.request("GET", "/api/me/"), json=True)
        assert_unavailable(http.request("GET", "/orders/"), json=False)
        assert_unavailable(http.request("GET", "/accounts/login/"), json=False)  # the session is read from the database

        own_postgres.start()
        answers = [http.request("GET", f"/api/orders/{order}/").status for _ in range(6)]
        assert answers == [200] * 6, "a stale connection was used after the restart"
        assert http.request("POST", "/api/orders/", {"lines": [{"sku": shop.skus[0], "quantity": 1}]}).status == 202
    assert "Internal Server Error" not in web.output()


def test_while_redis_is_down_web_answers_no_500_and_work_sent_by_hand_gets_503(shop: Shop, staff) -> None:
    PeriodicTask.objects.filter(name="orders.tasks.check_pending_orders").update(enabled=False)
    sweep = PeriodicTask.objects.get(name="orders.tasks.check_pending_orders")
    login = Client()
    login.force_login(staff)
    with WebProcess(shop.env) as web:
        web.wait_ready()
        customer = HttpSession(web.base_url, shop.session_key)
        admin = HttpSession(web.base_url, login.cookies["sessionid"].value)

        shop.redis.stop()
        placed = customer.request("POST", "/api/orders/", {"lines": [{"sku": shop.skus[0], "quantity": 1}]})
        assert placed.status == 202  # saved; the sweep sends it once the broker is back
        assert customer.request("GET", f"/api/orders/{placed.json()['id']}/").status == 200  # type: ignore[index]
        assert admin.request("GET", "/health/").status == 503
        assert admin.request("GET", "/admin/ops/overview/").status == 200
        run_now = admin.request(
            "POST",
            "/admin/django_celery_beat/periodictask/",
            form={"action": "run_now", "_selected_action": [sweep.pk]},
        )
        assert_unavailable(run_now, json=False)

        shop.redis.start()
        assert admin.request("GET", "/health/").json()["checks"]["broker"]["ok"] is True  # type: ignore[index]
    assert "Internal Server Error" not in web.output()
