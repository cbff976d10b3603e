"""What web answers when a request fails: 503 for a database or broker outage, JSON on /api/ (core/unavailable.py)."""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError
from django.test import RequestFactory
from kombu.exceptions import OperationalError as BrokerError

from core import unavailable


@pytest.mark.parametrize(("path", "json_body"), [("/api/orders/", True), ("/orders/", False)], ids=["api", "page"])
def test_an_outage_raised_outside_a_view_answers_503_with_retry_after(path: str, json_body: bool) -> None:
    request = RequestFactory().get(path)
    try:
        raise OperationalError("connection to server failed: Connection refused")
    except OperationalError:
        response = unavailable.server_error(request)
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    assert response["Content-Type"].startswith("application/json" if json_body else "text/html")


def test_any_other_error_is_still_a_500_and_json_on_the_api() -> None:
    try:
        raise ValueError("a bug")
    except ValueError:
        api = unavailable.server_error(RequestFactory().get("/api/orders/"))
        page = unavailable.server_error(RequestFactory().get("/orders/"))
    assert (api.status_code, json.loads(api.content)) == (500, {"error": "Internal server error."})
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


def test_an_error_caused_by_a_broker_outage_counts_as_one() -> None:
    try:
        try:
            raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        except BrokerError as exc:
            raise RuntimeError("could not send the task") from exc
    except RuntimeError as wrapped:
        assert unavailable.is_outage(wrapped)
    assert not unavailable.is_outage(ValueError("a bug"))
