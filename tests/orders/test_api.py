"""The JSON endpoints: placing, reading and cancelling orders, with bad input and other people's orders."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import transaction
from django.test import Client

from core.errors import FieldErrors
from orders.models import Order, OrderLine, Product
from orders.services import placing
from tests.factories import ProductFactory, UserFactory
from tests.orders.helpers import place, product

pytestmark = pytest.mark.django_db


def post_order(client: Client, body: object, **headers: str):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/api/orders/", data=data, content_type="application/json", headers=headers)


def test_placing_an_order_answers_202_with_its_location(customer_client, customer) -> None:
    mug = product(stock=5, price="12.50")

    response = post_order(customer_client, {"lines": [{"sku": mug.sku, "quantity": 2}]})

    assert response.status_code == 202
    order = Order.objects.get()
    assert response.json() == {
        "id": order.pk,
        "status": "pending",
        "url": f"/api/orders/{order.pk}/",
        "page_url": f"/orders/{order.pk}/",
    }
    assert response["Location"] == f"/api/orders/{order.pk}/"
    assert (order.customer, str(order.total)) == (customer, "25.00")
    assert list(order.lines.values_list("quantity", "unit_price")) == [(2, mug.price)]


def test_the_same_idempotency_key_twice_gives_one_order(customer_client) -> None:
    mug = product(stock=5)
    body = {"lines": [{"sku": mug.sku, "quantity": 1}]}

    first = post_order(customer_client, body, **{"Idempotency-Key": "retry-me-1"})
    second = post_order(customer_client, body, **{"Idempotency-Key": "retry-me-1"})

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_an_idempotency_key_reused_for_another_request_is_rejected(customer_client) -> None:
    mug = product(stock=5)
    post_order(customer_client, {"lines": [{"sku": mug.sku, "quantity": 1}]}, **{"Idempotency-Key": "k"})

    response = post_order(customer_client, {"lines": [{"sku": mug.sku, "quantity": 2}]}, **{"Idempotency-Key": "k"})

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]
    assert Order.objects.count() == 1


def test_the_same_key_from_two_customers_makes_two_orders(customer_client) -> None:
    mug = product(stock=5)
    other = Client()
    other.force_login(UserFactory())
    body = {"lines": [{"sku": mug.sku, "quantity": 1}]}

    post_order(customer_client, body, **{"Idempotency-Key": "same"})
    post_order(other, body, **{"Idempotency-Key": "same"})

    assert Order.objects.count() == 2


BAD_REQUESTS = [
    pytest.param({"lines": []}, "lines", id="no lines"),
    pytest.param({}, "lines", id="lines missing"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": 0}]}, "lines.0.quantity", id="zero quantity"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": -3}]}, "lines.0.quantity", id="negative quantity"),
    pytest.param({"lines": [{"sku": "NOPE", "quantity": 1}]}, "lines.0.sku", id="unknown sku"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": 6}]}, "lines.0.quantity", id="more than in stock"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": "2"}]}, "lines.0.quantity", id="quantity as a string"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": 1.5}]}, "lines.0.quantity", id="fractional quantity"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": True}]}, "lines.0.quantity", id="boolean quantity"),
    pytest.param({"lines": [{"sku": 7, "quantity": 1}]}, "lines.0.sku", id="sku as a number"),
    pytest.param(
        {"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "MUG", "quantity": 1}]},
        "lines.1.sku",
        id="the same sku twice",
    ),
    pytest.param({"lines": ["MUG"]}, "lines.0", id="line not an object"),
    pytest.param({"lines": {"sku": "MUG"}}, "lines", id="lines not a list"),
    pytest.param([1, 2], "body", id="body not an object"),
    pytest.param(b"{not json", "body", id="not json"),
    pytest.param({"lines": [{"sku": "MUG", "quantity": 1}] * 51}, "lines", id="too many lines"),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS)
def test_bad_input_answers_400_with_field_errors_and_saves_nothing(customer_client, body: object, field: str) -> None:
    ProductFactory(sku="MUG", stock=5)

    response = post_order(customer_client, body)

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in errors and all(isinstance(message, str) and message for message in errors[field])
    assert Order.objects.count() == OrderLine.objects.count() == 0


def test_a_malformed_idempotency_key_is_rejected(customer_client) -> None:
    mug = product(stock=5)

    response = post_order(
        customer_client, {"lines": [{"sku": mug.sku, "quantity": 1}]}, **{"Idempotency-Key": "x" * 300}
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]
    assert not Order.objects.exists()


def test_reading_an_order_gives_its_status_step_total_and_lines(customer_client, customer) -> None:
    mug = product(stock=5, price="12.50")
    order = place(customer, (mug, 2))

    body = customer_client.get(f"/api/orders/{order.pk}/").json()

    assert body["id"] == order.pk
    assert (body["status"], body["step"], body["total"], body["failure_reason"]) == ("pending", "", "25.00", "")
    assert body["lines"] == [{"sku": mug.sku, "name": mug.name, "quantity": 2, "unit_price": "12.50"}]
    assert body["updated_at"]


def test_someone_elses_order_is_404_everywhere(customer_client) -> None:
    order = place(UserFactory(), (product(), 1))

    assert customer_client.get(f"/api/orders/{order.pk}/").status_code == 404
    assert customer_client.post(f"/api/orders/{order.pk}/cancel/").status_code == 404
    assert customer_client.get(f"/orders/{order.pk}/").status_code == 404
    order.refresh_from_db()
    assert order.status == "pending"


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/orders/"), ("get", "/api/orders/1/"), ("post", "/api/orders/1/cancel/")],
)
def test_anonymous_requests_get_401_as_json_not_a_login_redirect(client, method: str, path: str) -> None:
    response = getattr(client, method)(path)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "log in" in response.json()["error"]


def test_csrf_is_enforced_on_the_api_and_answered_as_json(customer) -> None:
    mug = product(stock=5)
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)

    refused = post_order(client, {"lines": [{"sku": mug.sku, "quantity": 1}]})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]

    client.get("/orders/new/")  # sets the csrftoken cookie, as the page would
    token = client.cookies["csrftoken"].value
    accepted = post_order(client, {"lines": [{"sku": mug.sku, "quantity": 1}]}, **{"X-CSRFToken": token})
    assert accepted.status_code == 202


def test_cancel_answers_200_then_409_with_the_reason(customer_client, customer) -> None:
    cancellable = place(customer, (product(), 1))
    done = place(customer, (product(), 1))
    Order.objects.filter(pk=done.pk).update(status="completed", step="notified")

    ok = customer_client.post(f"/api/orders/{cancellable.pk}/cancel/")
    refused = customer_client.post(f"/api/orders/{done.pk}/cancel/")

    assert (ok.status_code, ok.json()) == (200, {"id": cancellable.pk, "status": "cancelled"})
    assert refused.status_code == 409
    assert refused.json() == {"error": "The order is already completed."}


def test_wrong_methods_get_405_as_json(customer_client) -> None:
    assert customer_client.get("/api/orders/").status_code == 405
    assert customer_client.delete("/api/orders/1/").status_code == 405


def test_a_placed_order_and_its_lines_are_saved_as_the_models_describe_them(customer) -> None:
    mug, pot = product(stock=5, price="12.50"), product(stock=5, price="3.20")

    placed = place(customer, (mug, 2), (pot, 1), key="k-1")

    saved = Order.objects.get()
    assert placed.pk == saved.pk and not placed._state.adding
    for field in Order._meta.concrete_fields:
        assert getattr(placed, field.attname) == getattr(saved, field.attname), field.name
    assert (saved.status, saved.step, saved.total, saved.idempotency_key) == (
        "pending",
        "",
        25 + Decimal("3.20"),
        "k-1",
    )
    lines = saved.lines.order_by("product_id").values_list("product_id", "quantity", "unit_price")
    assert sorted(lines) == sorted([(mug.pk, 2, mug.price), (pot.pk, 1, pot.price)])


def test_a_lost_idempotency_race_answers_with_the_other_order_and_leaves_the_transaction_usable(
    customer, monkeypatch
) -> None:
    mug = product(stock=5)
    first = place(customer, (mug, 1), key="raced")
    real_lookup = placing.order_for_key
    lookups = []

    def lookup_before_the_other_commit(*args: object) -> Order | None:
        # The first lookup runs before the other request's commit, so it finds nothing.
        lookups.append(args)
        return None if len(lookups) == 1 else real_lookup(*args)

    monkeypatch.setattr(placing, "order_for_key", lookup_before_the_other_commit)
    with transaction.atomic():
        placed = placing.place_order(
            customer_id=customer.pk, lines=[placing.LineRequest(sku=mug.sku, quantity=1)], idempotency_key="raced"
        )
        assert (placed.order.pk, placed.created) == (first.pk, False)
        assert Order.objects.count() == 1  # the caller's transaction still works
    assert len(lookups) == 2
    assert OrderLine.objects.count() == 1


def test_every_wrong_line_is_reported_at_once_and_nothing_is_saved(customer_client) -> None:
    ProductFactory(sku="MUG", stock=5)
    ProductFactory(sku="POT", stock=1)

    body = {"lines": [{"sku": "POT", "quantity": 1}, {"sku": "NOPE", "quantity": 1}, {"sku": "MUG", "quantity": 6}]}
    response = post_order(customer_client, body)

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "lines.1.sku": ["Unknown SKU 'NOPE'."],
        "lines.2.quantity": ["Only 5 of MUG in stock."],
    }
    assert Order.objects.count() == OrderLine.objects.count() == 0


def test_a_line_for_exactly_the_stock_left_is_accepted(customer) -> None:
    mug = product(stock=3, price="2.00")

    order = place(customer, (mug, 3))

    assert Order.objects.get().total == order.total == Decimal("6.00")
    assert OrderLine.objects.get().quantity == 3


def test_stock_that_comes_back_while_an_order_is_refused_lets_the_retry_place_it(customer, monkeypatch) -> None:
    mug = product(stock=1)
    real_validate = placing.validate_lines

    def restock_then_validate(lines: object) -> object:
        Product.objects.filter(pk=mug.pk).update(stock=5)  # another request's cancel, say
        return real_validate(lines)

    monkeypatch.setattr(placing, "validate_lines", restock_then_validate)
    placed = placing.place_order(customer_id=customer.pk, lines=[placing.LineRequest(sku=mug.sku, quantity=2)])

    assert placed.created and Order.objects.get().pk == placed.order.pk
    assert OrderLine.objects.get().quantity == 2


def test_stock_that_comes_and_goes_while_an_order_is_refused_asks_to_try_again(customer, monkeypatch) -> None:
    mug = product(stock=1)
    real_validate = placing.validate_lines

    def restock_validate_then_sell_out(lines: object) -> object:
        Product.objects.filter(pk=mug.pk).update(stock=5)
        try:
            return real_validate(lines)
        finally:
            Product.objects.filter(pk=mug.pk).update(stock=0)

    monkeypatch.setattr(placing, "validate_lines", restock_validate_then_sell_out)
    with pytest.raises(FieldErrors) as rejected:
        placing.place_order(customer_id=customer.pk, lines=[placing.LineRequest(sku=mug.sku, quantity=2)])

    assert rejected.value.errors == {"lines": ["The catalogue changed while the order was placed; please try again."]}
    assert Order.objects.count() == OrderLine.objects.count() == 0
