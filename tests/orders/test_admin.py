"""Staff work on orders in the admin: find them, read their history, send and replay them."""

from __future__ import annotations

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult

from core.base_task import Attempt
from orders.models import Order
from orders.services import pipeline
from tests.factories import ProductFactory, UserFactory
from tests.orders.helpers import fault, place, product

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_latency(settings) -> None:
    settings.PAYMENT_SANDBOX_LATENCY_MS = 0


def test_the_order_list_filters_by_status_and_searches_by_id_customer_and_sku(admin_client) -> None:
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    mug, cap = ProductFactory(sku="MUG-A"), ProductFactory(sku="CAP-B")
    first = place(alice, (mug, 1))
    second = place(bob, (cap, 1))
    Order.objects.filter(pk=second.pk).update(status="failed", failure_reason="Payment declined")

    def listed(query: str) -> set[int]:
        response = admin_client.get(f"/admin/orders/order/?{query}")
        assert response.status_code == 200
        return {order.pk for order in response.context["cl"].result_list}

    assert listed("status__exact=failed") == {second.pk}
    assert listed(f"q={first.pk}") == {first.pk}
    assert listed("q=alice") == {first.pk}
    assert listed(f"q={cap.sku}") == {second.pk}
    assert listed("q=nothing-matches") == set()


def test_an_order_page_shows_its_lines_payments_and_history_linked_to_task_results(admin_client, customer) -> None:
    order = place(customer, (product(), 1))
    fault(order, "charge", "transient")
    with pytest.raises(pipeline.TransientOrderError):
        pipeline.process_order(order.pk, attempt=Attempt("task-with-result"))
    Order.objects.filter(pk=order.pk).update(lease_expires_at=timezone.now())  # as if it got stuck
    pipeline.process_order(order.pk, attempt=Attempt("task-without-result"))
    result = TaskResult.objects.create(
        task_id="task-with-result", task_name="orders.tasks.process_order", status="RETRY"
    )

    page = admin_client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()

    assert f'href="/admin/django_celery_results/taskresult/{result.pk}/change/">task-with-result</a>' in page
    assert "task-without-result" in page
    assert "sandbox charge timed out" in page  # the retry's error
    assert f"order:{order.pk}:charge:0" in page  # the payment
    assert "Attempt started" in page and "Retry scheduled" in page


def test_staff_cannot_add_or_delete_orders_in_the_admin(admin_client, customer) -> None:
    order = place(customer, (product(), 1))
    assert admin_client.get("/admin/orders/order/add/").status_code == 403
    assert admin_client.get(f"/admin/orders/order/{order.pk}/delete/").status_code == 403


def test_process_selected_sends_only_waiting_orders(admin_client, customer, broker) -> None:
    waiting = place(customer, (product(), 1))
    done = place(customer, (product(), 1))
    Order.objects.filter(pk=done.pk).update(status="completed")

    response = admin_client.post(
        "/admin/orders/order/", {"action": "process_selected", "_selected_action": [waiting.pk, done.pk]}, follow=True
    )

    text = response.content.decode()
    assert "Sent 1 order(s) to the workers." in text
    assert "Skipped 1" in text
    assert waiting.events.filter(kind="requeued").exists()
    assert not done.events.exists()


def test_non_staff_users_cannot_reach_the_order_admin(customer_client) -> None:
    response = customer_client.get("/admin/orders/order/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
