"""The OpenAPI 3.1 document of the JSON API (/api/schema/), and the readable page made from it (/docs/api/).

The document is written here, beside the URL table, and kept true by tests
against the code: every /api/ route of the URL resolver has a path here with
exactly the methods its view accepts (and no path here lacks a route), and
schemathesis runs the live server against this document, checking that every
answer conforms and none is a 5xx (tests/foundation/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

JSON = "application/json"
ORDER_STATUSES = ["pending", "processing", "completed", "failed", "cancelled"]
ORDER_STEPS = ["", "reserved", "charged", "shipped", "notified"]
REPORT_KINDS = ["daily", "weekly", "monthly", "custom"]
REPORT_STATUSES = ["pending", "running", "done", "failed", "cancelled"]
CAMPAIGN_STATUSES = ["draft", "sending", "done", "cancelled", "failed"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


# What every endpoint may answer besides its own: JSON, always.
COMMON = {
    "401": _error("Not logged in (never a redirect): log in at /accounts/login/."),
    "503": _error("The database or the broker is briefly unavailable; see Retry-After."),
}
CSRF_NOTE = "Send the csrftoken cookie's value as X-CSRFToken; without it the answer is 403."
ID = {"type": "integer", "minimum": 1}
NULLABLE_TEXT = {"type": ["string", "null"]}


def _path_id(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": ID}


def document() -> dict[str, Any]:
    """The OpenAPI document, with SITE_URL as its server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Shop back office JSON API",
            "version": "1",
            "description": (
                "Customers place, follow and cancel their orders; staff request and follow sales reports, "
                "follow campaigns and look at or stop tasks.\n\n"
                "**Authentication** is Django's session: log in at `/accounts/login/` and send the `sessionid` "
                "cookie. **CSRF**: every POST and DELETE also sends the `csrftoken` cookie's value as the "
                "`X-CSRFToken` header. **Idempotency**: `POST /api/orders/` takes an `Idempotency-Key` header; "
                "the same key with the same lines answers with the same order, and never places a second one.\n\n"
                "Every answer is JSON, errors included: `401` not logged in, `403` CSRF or a missing permission, "
                "`404` not found (also for anyone else's order), `405` wrong method, `413` body too large, "
                "`415` a body that is not JSON, `400` with `errors` naming each wrong field, and `503` with "
                "`Retry-After` while the database or the broker is away."
            ),
        },
        "servers": [{"url": settings.SITE_URL}],
        "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": SCHEMAS},
        "security": [{"session": []}],
        "paths": PATHS,
    }


SECURITY_SCHEMES = {
    "session": {"type": "apiKey", "in": "cookie", "name": "sessionid", "description": "Django's session cookie."},
    "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRFToken", "description": CSRF_NOTE},
}
UNSAFE = [{"session": [], "csrf": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        },
        "description": "`error` says what went wrong; `errors` maps each wrong field (e.g. lines.0.quantity).",
    },
    "Me": {
        "type": "object",
        "required": ["id", "username", "email", "is_staff"],
        "properties": {
            "id": {"type": "integer"},
            "username": {"type": "string"},
            "email": {"type": "string"},
            "is_staff": {"type": "boolean"},
        },
    },
    "OrderRequest": {
        "type": "object",
        "required": ["lines"],
        "properties": {
            "lines": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "quantity"],
                    "properties": {
                        "sku": {"type": "string", "minLength": 1, "maxLength": 64},
                        "quantity": {"type": "integer", "minimum": 1},
                    },
                },
            }
        },
        "example": {"lines": [{"sku": "MUG-001", "quantity": 2}]},
    },
    "OrderPlaced": {
        "type": "object",
        "required": ["id", "status", "url", "page_url"],
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": ORDER_STATUSES},
            "url": {"type": "string"},
            "page_url": {"type": "string"},
        },
    },
    "Order": {
        "type": "object",
        "required": ["id", "status", "step", "total", "lines", "failure_reason", "tracking_number", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": ORDER_STATUSES},
            "step": {"enum": ORDER_STEPS, "description": "The last finished step of the pipeline."},
            "total": {"type": "string", "description": 'A decimal amount, e.g. "25.00".'},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "name": {"type": "string"},
                        "quantity": {"type": "integer"},
                        "unit_price": {"type": "string"},
                    },
                },
            },
            "failure_reason": {"type": "string"},
            "tracking_number": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "OrderCancelled": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "integer"}, "status": {"enum": ORDER_STATUSES}},
    },
    "ReportRequest": {
        "type": "object",
        "required": ["start", "end"],
        "properties": {"start": {"type": "string", "format": "date"}, "end": {"type": "string", "format": "date"}},
        "example": {"start": "2026-10-01", "end": "2026-10-31"},
    },
    "Report": {
        "type": "object",
        "required": ["id", "kind", "period_start", "period_end", "status", "progress", "summary", "error"],
        "properties": {
            "id": {"type": "integer"},
            "kind": {"enum": REPORT_KINDS},
            "period_start": {"type": "string", "format": "date"},
            "period_end": {"type": "string", "format": "date"},
            "status": {"enum": REPORT_STATUSES},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "summary": {"type": "object", "description": "Revenue, order count, average value, top products."},
            "error": {"type": "string"},
            "csv_url": NULLABLE_TEXT,
            "chart_url": NULLABLE_TEXT,
            "url": {"type": "string"},
        },
    },
    "CampaignProgress": {
        "type": "object",
        "required": ["id", "status", "total", "sent", "failed", "progress"],
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": CAMPAIGN_STATUSES},
            "total": {"type": "integer"},
            "sent": {"type": "integer"},
            "failed": {"type": "integer"},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        },
    },
    "Task": {
        "type": "object",
        "required": ["id", "task", "state", "known", "progress", "result", "error", "subject"],
        "properties": {
            "id": {"type": "string"},
            "task": NULLABLE_TEXT,
            "state": {"type": "string", "description": "Celery's state: PENDING, STARTED, PROGRESS, SUCCESS, ..."},
            "known": {"type": "boolean"},
            "progress": {"type": ["object", "null"]},
            "result": {},
            "error": {
                "type": ["object", "null"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
            "subject": {
                "type": ["object", "null"],
                "properties": {"model": {"type": "string"}, "id": {}, "name": {"type": "string"}},
            },
        },
    },
    "TaskStopped": {
        "type": "object",
        "required": ["id", "state", "outcome"],
        "properties": {"id": {"type": "string"}, "state": {"type": "string"}, "outcome": {"type": "string"}},
    },
}

ORDER_ID = _path_id("order_id", "One of the caller's orders.")
REPORT_ID = _path_id("report_id", "A report.")
TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "A Celery task id.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
FORBIDDEN = _error("CSRF failed, or the caller lacks the permission named in the message.")

PATHS: dict[str, Any] = {
    "/api/me/": {
        "get": {
            "summary": "Who this session belongs to",
            "tags": ["accounts"],
            "responses": {"200": _json(_ref("Me"), "The session's user."), **COMMON},
        }
    },
    "/api/orders/": {
        "post": {
            "summary": "Place an order",
            "tags": ["orders"],
            "security": UNSAFE,
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "1 to 255 printable characters, e.g. a UUID; retries with it get the same order.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            ],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("OrderRequest")}}},
            "responses": {
                "202": _json(_ref("OrderPlaced"), "Accepted: it is processed in the background (see Location)."),
                "400": _error("Wrong lines (each named), or an Idempotency-Key reused for other lines. Nothing saved."),
                "403": FORBIDDEN,
                "413": _error("The body is larger than ORDER_MAX_BODY_BYTES."),
                "415": _error("The body is not JSON."),
                **COMMON,
            },
        }
    },
    "/api/orders/{order_id}/": {
        "get": {
            "summary": "One of the caller's orders",
            "tags": ["orders"],
            "parameters": [ORDER_ID],
            "responses": {
                "200": _json(_ref("Order"), "The order."),
                "404": _error("No such order of the caller's."),
                **COMMON,
            },
        }
    },
    "/api/orders/{order_id}/cancel/": {
        "post": {
            "summary": "Cancel one of the caller's orders",
            "tags": ["orders"],
            "security": UNSAFE,
            "parameters": [ORDER_ID],
            "responses": {
                "200": _json(_ref("OrderCancelled"), "Cancelled (or it was already)."),
                "403": FORBIDDEN,
                "404": _error("No such order of the caller's."),
                "409": _error("It can no longer be cancelled; the message says why."),
                **COMMON,
            },
        }
    },
    "/api/reports/": {
        "post": {
            "summary": "Request a custom sales report (reports.request_report)",
            "tags": ["reports"],
            "security": UNSAFE,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ReportRequest")}}},
            "responses": {
                "202": _json(_ref("Report"), "Accepted: generated in the background (see Location)."),
                "400": _error("A wrong date or range, each field named. Nothing saved."),
                "403": FORBIDDEN,
                "413": _error("The body is too large."),
                "415": _error("The body is not JSON."),
                **COMMON,
            },
        }
    },
    "/api/reports/{report_id}/": {
        "get": {
            "summary": "A report, with its progress and figures (reports.view_report)",
            "tags": ["reports"],
            "parameters": [REPORT_ID],
            "responses": {
                "200": _json(_ref("Report"), "The report."),
                "403": FORBIDDEN,
                "404": _error("No such report."),
                **COMMON,
            },
        }
    },
    "/api/reports/{report_id}/cancel/": {
        "post": {
            "summary": "Cancel a pending or running report (reports.cancel_report)",
            "description": (
                "Its slices that have not started are revoked, running ones stop at their next check, and the "
                "report ends cancelled, with no files."
            ),
            "tags": ["reports"],
            "security": UNSAFE,
            "parameters": [REPORT_ID],
            "responses": {
                "200": _json(_ref("Report"), "Cancelled."),
                "403": FORBIDDEN,
                "404": _error("No such report."),
                "409": _error("It is done, failed or cancelled already; the message says so."),
                **COMMON,
            },
        }
    },
    "/api/campaigns/{campaign_id}/": {
        "get": {
            "summary": "A campaign's progress (notifications.view_campaign)",
            "tags": ["campaigns"],
            "parameters": [_path_id("campaign_id", "A campaign.")],
            "responses": {
                "200": _json(_ref("CampaignProgress"), "Its progress."),
                "403": FORBIDDEN,
                "404": _error("No such campaign."),
                **COMMON,
            },
        }
    },
    "/api/tasks/{task_id}/": {
        "get": {
            "summary": "A task's state, progress, result or error, and what it works on (ops.view_operations)",
            "tags": ["tasks"],
            "parameters": [TASK_ID],
            "responses": {
                "200": _json(_ref("Task"), "The task, as Celery knows it; audited."),
                "400": _error("Not a task id."),
                "403": FORBIDDEN,
                **COMMON,
            },
        },
        "delete": {
            "summary": "Stop a task: revoke it, or ask its domain to stop its work (also ops.run_task)",
            "tags": ["tasks"],
            "security": UNSAFE,
            "parameters": [TASK_ID],
            "responses": {
                "202": _json(_ref("TaskStopped"), "What was done; audited."),
                "400": _error("Not a task id."),
                "403": FORBIDDEN,
                "409": _error("It finished already, or its domain will not stop it; the message says why."),
                **COMMON,
            },
        },
    },
    "/api/schema/": {
        "get": {
            "summary": "This document",
            "tags": ["docs"],
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {JSON: {"schema": {}}}}},
        }
    },
}
