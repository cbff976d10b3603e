"""The JSON boundary: every answer under /api/ is JSON (errors included), and bodies are read defensively.

Django answers errors with HTML pages and login redirects; an API client can do
nothing with either. Here: 401/403/404/405/413/415/500 as JSON, request bodies
that must be JSON, and a reader that refuses what the database or Python cannot
hold (NUL characters, unpaired surrogates, nesting deep enough to exhaust the
stack) with a 400 instead of a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.csrf import csrf_failure as html_csrf_failure

from core import json_input

API_PREFIX = "/api/"


class ApiError(Exception):
    """An answer to give instead of going on: a status, a message and/or field errors."""

    def __init__(self, status: int, message: str | None = None, *, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message or errors)
        self.status = status
        self.message = message
        self.errors = errors

    def response(self) -> JsonResponse:
        return json_error(self.status, self.message, errors=self.errors)


def json_error(status: int, message: str | None = None, *, errors: dict[str, list[str]] | None = None) -> JsonResponse:
    body: dict[str, Any] = {}
    if message is not None:
        body["error"] = message
    if errors is not None:
        body["errors"] = errors
    return JsonResponse(body, status=status)


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


View = Callable[..., HttpResponse]


def api_view(*, methods: tuple[str, ...], permission: str | None = None, login: bool = True) -> Callable[[View], View]:
    """Require a session login (401; unless login=False), the named permission (403), an allowed method (405)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if login and not request.user.is_authenticated:
                return json_error(401, "Authentication required: log in at /accounts/login/.")
            if permission is not None and not request.user.has_perm(permission):
                return json_error(403, f"This needs the {permission!r} permission.")
            if request.method not in methods:
                response = json_error(405, f"Method {request.method} is not allowed here.")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        wrapper.api_methods = methods  # type: ignore[attr-defined]  # read by the OpenAPI test
        return wrapper

    return decorate


# --- reading bodies -------------------------------------------------------------------


def _has_body(request: HttpRequest) -> bool:
    length = request.META.get("CONTENT_LENGTH") or "0"
    return (length.isdigit() and int(length) > 0) or "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "")


def _is_json_type(request: HttpRequest) -> bool:
    return request.content_type in ("application/json", "") or request.content_type.endswith("+json")


def read_json(request: HttpRequest, *, max_bytes: int) -> Any:
    """The request body as JSON, or ApiError: 413 when larger than max_bytes, 415 when not JSON, else 400."""
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"The request body is larger than {max_bytes} bytes.")
    if _has_body(request) and not _is_json_type(request):
        raise ApiError(415, "Send the body as JSON, with Content-Type: application/json.")
    try:
        body = request.body
    except RequestDataTooBig:
        raise ApiError(413, f"The request body is larger than {max_bytes} bytes.") from None
    if len(body) > max_bytes:
        raise ApiError(413, f"The request body is larger than {max_bytes} bytes.")
    try:
        return json_input.loads(body)
    except json_input.JsonInputError as exc:
        raise ApiError(400, errors={exc.path or "body": [str(exc)]}) from None


# --- error handlers (handler400/403/404 in config/urls.py; handler500 is core.unavailable's) -------------


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: JSON under /api/, Django's page elsewhere.

    Django raises RequestDataTooBig (a 400) when a body passes DATA_UPLOAD_MAX_MEMORY_SIZE
    before any view runs, for example while the CSRF check parses a form body; it is a 413.
    """
    if is_api(request):
        if isinstance(exception, RequestDataTooBig):
            return json_error(413, "The request body is too large.")
        return json_error(400, "Bad request.")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return json_error(403, str(exception) or "Permission denied.")
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return json_error(404, f"No API endpoint at {request.path}.")
    return defaults.page_not_found(request, exception)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON for the API (send the X-CSRFToken header), Django's page elsewhere."""
    if is_api(request):
        return json_error(403, f"CSRF check failed ({reason}). Send the csrftoken cookie's value as X-CSRFToken.")
    return html_csrf_failure(request, reason=reason)
