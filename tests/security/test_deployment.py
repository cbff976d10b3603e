"""Deployment defaults against real processes: tokens stay out of gunicorn's logs, Flower runs read-only."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.test import Client
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from notifications.services.preferences import unsubscribe_token
from ops.redaction import redact
from tests.factories import UserFactory
from tests.support.processes import ManagedProcess, celery_command, free_port, wait_for
from tests.support.servers import HttpSession, WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_redact_cuts_the_token_out_of_reset_confirmation_and_unsubscribe_links() -> None:
    assert redact("GET /accounts/reset/MQ/cn3-abc123/ HTTP/1.1") == "GET /accounts/reset/MQ/[redacted]/ HTTP/1.1"
    assert redact("/accounts/confirm/MQ/cn3-abc123/") == "/accounts/confirm/MQ/[redacted]/"
    assert redact("Not Found: /unsubscribe/MQ:1vX:abc/") == "Not Found: /unsubscribe/[redacted]/"
    assert redact("/accounts/reset/MQ/set-password/") == "/accounts/reset/MQ/set-password/"
    assert redact("/accounts/reset/done/") == "/accounts/reset/done/"


def test_reset_and_unsubscribe_tokens_never_reach_the_web_process_output(web_env) -> None:
    customer = UserFactory()
    reset_token = default_token_generator.make_token(customer)
    uid = urlsafe_base64_encode(force_bytes(customer.pk))
    unsubscribe = unsubscribe_token(customer.pk)
    with WebProcess(web_env) as web:
        web.wait_ready()
        session = HttpSession(web.base_url)
        reset = session.request("GET", f"/accounts/reset/{uid}/{reset_token}/")
        unsubscribed = session.request("GET", f"/unsubscribe/{unsubscribe}/")
        broken = session.request("GET", f"/unsubscribe/{unsubscribe}tampered/")  # a 404: Django logs its path
        wait_for(lambda: web.output().count("/unsubscribe/[redacted]/") >= 2, 10, 0.1, "the access log lines")
        output = web.output()
    assert (reset.status, unsubscribed.status, broken.status) == (200, 200, 404)
    for secret in (reset_token, unsubscribe, unsubscribe.split(":")[-1]):
        assert secret not in output
    assert f"/accounts/reset/{uid}/[redacted]/" in output
    assert "Not Found: /unsubscribe/[redacted]/" in output


@pytest.mark.rabbitmq
def test_flower_as_compose_runs_it_refuses_to_send_or_revoke_tasks(process_env, broker) -> None:
    port = free_port()
    options = (f"--port={port}", "--address=127.0.0.1", "--read_only", "--basic_auth=ops:s3cret")
    flower = ManagedProcess(celery_command("flower", *options), process_env, label="flower")
    credentials = base64.b64encode(b"ops:s3cret").decode()

    def post(path: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST")
        request.add_header("Authorization", f"Basic {credentials}")
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
        except OSError:
            return False
        return True

    with flower:
        wait_for(answers, 60, 0.3, "flower to answer")
        assert post("/api/task/async-apply/orders.tasks.check_pending_orders") == 403
        assert post("/api/task/send-task/orders.tasks.check_pending_orders") == 403
        assert post("/api/task/revoke/some-task-id") == 403
    assert all(not broker.depth(queue) for queue in ("high_priority", "default", "low_priority"))


def test_gunicorn_answers_hostile_api_requests_with_json_4xx(web_env, settings) -> None:
    customer = UserFactory()
    client = Client()
    client.force_login(customer)
    with WebProcess(web_env) as web:
        web.wait_ready()
        session = HttpSession(web.base_url, client.cookies["sessionid"].value)
        unknown = session.request("GET", "/api/no-such-endpoint/")
        nul = session.request("POST", "/api/orders/", {"lines": [{"sku": "MUG\x00", "quantity": 1}]})
        deep = session.send_bytes("POST", "/api/orders/", b"[" * 8000 + b"]" * 8000, "application/json", None, 30)
        too_big = session.send_bytes(
            "POST", "/api/orders/", b" " * (settings.ORDER_MAX_BODY_BYTES + 1), "application/json", None, 30
        )
        form = session.post_form("/api/orders/", {"lines": "MUG"})
    answers = {"unknown": unknown, "nul": nul, "deep": deep, "too_big": too_big, "form": form}
    expected = {"unknown": 404, "nul": 400, "deep": 400, "too_big": 413, "form": 415}
    assert {name: r.status for name, r in answers.items()} == expected
    assert all(r.headers["Content-Type"] == "application/json" for r in answers.values())
