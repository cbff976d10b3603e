"""Database and broker outages answer 503 with Retry-After, never 500: JSON on /api/, a plain page elsewhere.

The middleware turns such an error raised in a view into the answer; the
handler500 view does the same for one raised anywhere else (a session saved
after the view, another middleware). Django closes a connection that failed at
the end of the request, and checks a kept one before the next request uses it
(CONN_HEALTH_CHECKS), so the first request after the outage is served as usual.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import redis
from django.db import InterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import defaults

from core.dispatch import broker_refused

logger = logging.getLogger(__name__)

# A database restart takes seconds; so does the broker coming back or draining a full queue.
RETRY_AFTER_SECONDS = 5
OUTAGE_ERRORS = (
    DatabaseOperationalError,  # cannot connect, connection lost, the server shutting down, a statement timeout
    InterfaceError,  # a connection already closed
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,  # a refused or reset socket
)


def is_outage(exc: BaseException | None) -> bool:
    """True for an error that says the database or the broker is unreachable, itself or as the direct cause."""
    return any(
        isinstance(error, OUTAGE_ERRORS) or broker_refused(error)  # Kombu gave up, RabbitMQ or Redis refused
        for error in (exc, getattr(exc, "__cause__", None))
        if error is not None
    )


def unavailable(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """503 with Retry-After: {"error": ...} on /api/, a page that needs no database elsewhere."""
    logger.warning("%s %s answered 503: %s: %s", request.method, request.path, type(exc).__name__, exc)
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(
            {"error": "The service is briefly unavailable; try again in a few seconds."}, status=503
        )
    else:
        response = HttpResponse(render_to_string("503.html"), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class OutageMiddleware:
    """Answer 503 instead of 500 when a view fails because the database or the broker is away."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return unavailable(request, exception) if is_outage(exception) else None


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: 503 for an outage raised outside a view; otherwise Django's 500 (JSON on /api/)."""
    exc = sys.exc_info()[1]
    if is_outage(exc):
        return unavailable(request, exc)  # type: ignore[arg-type]
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Internal server error."}, status=500)
    return defaults.server_error(request)
