"""Property-based tests (hypothesis) on every JSON endpoint: no generated request gives a 5xx, nothing is half-saved."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from django.db.models import Count
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifications.models import Campaign
from orders.models import Order, OrderLine, Product
from reports.models import Report
from tests.factories import client_of, staff_with

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Any JSON value, including the shapes that broke things: NUL, surrogates, deep nesting, huge numbers.
text = st.text(alphabet=st.characters(codec=None), max_size=30) | st.sampled_from(["\x00", "\ud800", "MUG", ""])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4)
)
deep = st.integers(min_value=20, max_value=3000).map(lambda depth: "[" * depth + "]" * depth)
dates = st.dates().map(str) | st.sampled_from(["0001-01-01", "9999-12-31", "2025-02-30", "yesterday", ""])
raw_bodies = st.binary(max_size=200) | deep.map(str.encode)


def order_bodies() -> st.SearchStrategy[object]:
    line = st.fixed_dictionaries(
        {}, optional={"sku": text | st.just("MUG") | json_values, "quantity": st.integers(-5, 10**12) | json_values}
    )
    return json_values | st.fixed_dictionaries({"lines": st.lists(line, max_size=5) | json_values})


def report_bodies() -> st.SearchStrategy[object]:
    return json_values | st.fixed_dictionaries({}, optional={"start": dates | json_values, "end": dates | json_values})


def send(client: Client, method: str, path: str, body: object, content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return getattr(client, method)(path, data=data, content_type=content_type)


def assert_clean_answer(response) -> None:
    assert response.status_code < 500, response.content[:300]
    assert response["Content-Type"] == "application/json", response.content[:300]
    response.json()


@pytest.fixture
def customer_api(customer) -> Client:
    return client_of(customer)


@pytest.fixture
def finance_api() -> Client:
    return client_of(staff_with("reports.view_report", "reports.request_report", "notifications.view_campaign"))


def assert_orders_whole() -> None:
    """Every order has its lines and its total; no stock went negative."""
    assert not Order.objects.annotate(n=Count("lines")).filter(n=0).exists()
    assert not Product.objects.filter(stock__lt=0).exists()


@FUZZ
@given(body=order_bodies() | raw_bodies, content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_placing_an_order_never_fails_with_a_5xx_and_never_half_saves(customer_api, body, content_type) -> None:
    Product.objects.get_or_create(sku="MUG", defaults={"name": "Mug", "price": 10, "stock": 1000})
    before = (Order.objects.count(), OrderLine.objects.count())

    response = send(customer_api, "post", "/api/orders/", body, content_type or "application/json")

    assert_clean_answer(response)
    after = (Order.objects.count(), OrderLine.objects.count())
    if response.status_code == 202:
        assert after[0] == before[0] + 1 or response.has_header("Idempotent-Replayed")
    else:
        assert after == before
    assert_orders_whole()


@FUZZ
@given(order_id=st.integers(min_value=0, max_value=2**63), body=json_values | raw_bodies)
def test_reading_and_cancelling_any_order_id_never_fails_with_a_5xx(customer_api, order_id, body) -> None:
    assert_clean_answer(customer_api.get(f"/api/orders/{order_id}/"))
    assert_clean_answer(send(customer_api, "post", f"/api/orders/{order_id}/cancel/", body))
    assert_orders_whole()


@FUZZ
@given(body=report_bodies() | raw_bodies)
def test_requesting_a_report_never_fails_with_a_5xx_and_creates_only_what_it_accepts(finance_api, body) -> None:
    before = Report.objects.count()

    response = send(finance_api, "post", "/api/reports/", body)

    assert_clean_answer(response)
    assert Report.objects.count() == before + (1 if response.status_code == 202 else 0)


@FUZZ
@given(pk=st.integers(min_value=0, max_value=2**63))
def test_reading_any_report_campaign_or_me_never_fails_with_a_5xx(finance_api, pk) -> None:
    Campaign.objects.get_or_create(name="Spring", defaults={"subject": "Hi", "body": "Hi"})
    for path in (f"/api/reports/{pk}/", f"/api/campaigns/{pk}/", "/api/me/", f"/api/nothing/{pk}/"):
        assert_clean_answer(finance_api.get(path))


@FUZZ
@given(task_id=text.filter(bool))
def test_reading_and_stopping_any_task_id_never_fails_with_a_5xx(admin_client, task_id) -> None:
    path = f"/api/tasks/{quote(task_id.encode('utf-8', 'surrogatepass'), safe='')}/"
    assert_clean_answer(admin_client.get(path))
    assert_clean_answer(admin_client.delete(path))
