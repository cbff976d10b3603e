"""The JSON boundary: hostile bodies, wrong content types, unknown URLs and oversized bodies never give a 500."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from orders.models import Order, OrderLine
from reports.models import Report
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def mug():
    return ProductFactory(sku="MUG", stock=5)


def post_json(client: Client, path: str, raw: bytes | str, content_type: str = "application/json"):
    return client.post(path, data=raw, content_type=content_type)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_ORDER_BODIES = [
    pytest.param('{"lines": [{"sku": "MU\\u0000G", "quantity": 1}]}', "lines.0.sku", id="NUL in a string"),
    pytest.param('{"lines": [{"sku": "\\ud800", "quantity": 1}]}', "lines.0.sku", id="lone surrogate"),
    pytest.param('{"lines": [{"sku": "MUG", "quantity": 1, "\\u0000": 1}]}', "lines.0", id="NUL in a key"),
    pytest.param('{"lines": ' + nested(8000) + "}", "body", id="array nested 8000 deep"),
    pytest.param('{"lines": [{"sku": "MUG", "quantity": 1}], "x": ' + nested(50) + "}", "body", id="nested 50 deep"),
]


@pytest.mark.parametrize(("raw", "field"), HOSTILE_ORDER_BODIES)
def test_a_hostile_order_body_gets_400_with_a_field_error_and_saves_nothing(customer_client, mug, raw, field) -> None:
    response = post_json(customer_client, "/api/orders/", raw)

    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert Order.objects.count() == OrderLine.objects.count() == 0


def test_a_multipart_or_form_body_gets_415_as_json(customer_client, mug) -> None:
    multipart = customer_client.post("/api/orders/", {"lines": "MUG"})  # the test client sends multipart
    form = post_json(customer_client, "/api/orders/", "lines=MUG", "application/x-www-form-urlencoded")

    for response in (multipart, form):
        assert response.status_code == 415
        assert "application/json" in response.json()["error"]
    assert not Order.objects.exists()


def test_a_malformed_multipart_body_that_the_csrf_check_parses_gets_400_as_json(customer) -> None:
    client = Client(enforce_csrf_checks=True)  # the CSRF check reads form bodies before any view runs
    client.force_login(customer)
    client.get("/orders/new/")
    token = client.cookies["csrftoken"].value

    response = client.post(
        "/api/orders/", "--x\r\nbroken", content_type="multipart/form-data; boundary=", headers={"X-CSRFToken": token}
    )

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"


def test_an_oversized_body_gets_413_as_json(customer_client, mug, settings) -> None:
    body = json.dumps({"lines": [{"sku": "MUG", "quantity": 1}], "pad": "x" * settings.ORDER_MAX_BODY_BYTES})
    huge = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)

    for raw in (body, huge):
        response = post_json(customer_client, "/api/orders/", raw)
        assert response.status_code == 413
        assert "larger than" in response.json()["error"]
    assert not Order.objects.exists()


def test_an_unknown_api_url_gets_404_as_json_and_a_page_gets_html(customer_client) -> None:
    api = customer_client.get("/api/nothing-here/")
    page = customer_client.get("/nothing-here/")

    assert (api.status_code, api["Content-Type"]) == (404, "application/json")
    assert "/api/nothing-here/" in api.json()["error"]
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


REPORT_BODIES = [
    pytest.param({"start": 20250101, "end": "2025-01-02"}, "start", "as a string", id="number as a date"),
    pytest.param({"start": "2025-01-01", "end": ["2025-01-02"]}, "end", "as a string", id="list as a date"),
    pytest.param({"start": {"y": 2025}, "end": "2025-01-02"}, "start", "as a string", id="object as a date"),
    pytest.param({"start": "0001-01-01", "end": "0001-01-05"}, "start", "Reports cover", id="year 1"),
    pytest.param({"start": "2025-01-01", "end": "9999-12-31"}, "end", "Reports cover", id="year 9999"),
    pytest.param({"start": "1899-12-25", "end": "1900-01-05"}, "start", "Reports cover", id="before 1900"),
]


@pytest.mark.parametrize(("body", "field", "message"), REPORT_BODIES)
def test_a_report_request_with_a_bad_date_gets_400_and_creates_nothing(staff, body, field, message) -> None:
    client = Client()
    client.force_login(staff)

    response = post_json(client, "/api/reports/", json.dumps(body))

    assert response.status_code == 400, response.content
    assert message in " ".join(response.json()["errors"][field])
    assert not Report.objects.exists()


def test_a_deeply_nested_report_request_gets_400(staff) -> None:
    client = Client()
    client.force_login(staff)

    response = post_json(client, "/api/reports/", '{"start": ' + nested(400) + "}")

    assert response.status_code == 400
    assert "nested" in response.json()["errors"]["body"][0]
    assert not Report.objects.exists()
