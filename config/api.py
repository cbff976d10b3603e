"""Small helpers for the JSON endpoints: JSON errors instead of HTML pages or login redirects."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as html_csrf_failure


def json_error(status: int, message: str | None = None, *, errors: dict[str, list[str]] | None = None) -> JsonResponse:
    body: dict[str, Any] = {}
    if message is not None:
        body["error"] = message
    if errors is not None:
        body["errors"] = errors
    return JsonResponse(body, status=status)


View = Callable[..., HttpResponse]


def api_view(*, methods: tuple[str, ...], staff: bool = False) -> Callable[[View], View]:
    """Require a session login (401), staff if asked (403) and an allowed method (405), all as JSON."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return json_error(401, "Authentication required: log in at /accounts/login/.")
            if staff and not request.user.is_staff:
                return json_error(403, "Staff only.")
            if request.method not in methods:
                response = json_error(405, f"Method {request.method} is not allowed here.")
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON for the API (send the X-CSRFToken header), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return json_error(403, f"CSRF check failed ({reason}). Send the csrftoken cookie's value as X-CSRFToken.")
    return html_csrf_failure(request, reason=reason)
