"""The OpenAPI document stays true: it names every /api/ route with its methods, and the live server keeps to it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from config import openapi
from tests.factories import ProductFactory, StaffFactory
from tests.support.servers import WebProcess

pytestmark = pytest.mark.django_db


def api_routes() -> dict[str, set[str]]:
    """Every /api/ route the URL resolver answers, as an OpenAPI path, with the methods its view accepts."""
    found: dict[str, set[str]] = {}

    def walk(patterns: list, prefix: str) -> None:
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern) and route.startswith("api/"):
                path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
                methods = getattr(entry.callback, "api_methods", None)
                assert methods, f"/{route} is not an api_view, so it does not answer as the API does"
                found[path] = {method.lower() for method in methods}

    walk(get_resolver().url_patterns, "")
    return found


def test_every_api_route_is_in_the_document_with_exactly_the_methods_it_accepts() -> None:
    documented = {path: set(item) for path, item in openapi.document()["paths"].items()}
    assert documented == api_routes()


def test_the_document_is_served_to_anyone_and_the_docs_page_lists_every_endpoint() -> None:
    client = Client(HTTP_HOST="localhost")
    document = client.get("/api/schema/").json()
    assert document["openapi"].startswith("3.1") and document == openapi.document()
    page = client.get("/docs/api/").content.decode()
    for path, item in document["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in page
    assert "Idempotency-Key" in page and "X-CSRFToken" in page


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_live_server_keeps_to_the_document_and_never_answers_5xx(web_env, tmp_path: Path) -> None:
    ProductFactory(sku="MUG-001", stock=1000)  # the document's example order names it
    login = Client(HTTP_HOST="localhost")
    login.force_login(StaffFactory(username="schemathesis"))
    session = login.cookies["sessionid"].value
    csrf = "s" * 32  # Django takes the unmasked secret as the header value too
    with WebProcess(web_env) as web:
        web.wait_ready()
        checks = [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
            "response_headers_conformance",
            "negative_data_rejection",
            "unsupported_method",
        ]
        command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{web.base_url}/api/schema/"]
        command += ["--url", web.base_url, "--no-color", "--max-examples", "25", "--seed", "1"]
        # The session and CSRF token are sent with every request below, so the generator must not
        # vary them (it would count a request it thinks lacks the cookie as wrongly accepted).
        command += ["--generation-with-security-parameters", "false"]
        command += ["--checks", ",".join(checks), "--generation-database", "none", "--report-dir", str(tmp_path)]
        for header in (
            f"Cookie: sessionid={session}; csrftoken={csrf}",
            f"X-CSRFToken: {csrf}",
            "Referer: " + web.base_url,
        ):
            command += ["--header", header]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
