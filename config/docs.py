"""The JSON API's OpenAPI document (/api/schema/) and the page that people read (/docs/api/)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from config import openapi
from config.api import api_view

METHODS = ("get", "post", "put", "patch", "delete")


@api_view(methods=("GET",), login=False)
def api_schema(request: HttpRequest) -> HttpResponse:
    """GET /api/schema/: the OpenAPI 3.1 document; public, like the page made from it."""
    return JsonResponse(openapi.document())


@require_GET
def api_docs(request: HttpRequest) -> HttpResponse:
    """GET /docs/api/: the OpenAPI document as a page, endpoint by endpoint, then each shape of body."""
    document = openapi.document()
    endpoints = [
        {
            "path": path,
            "method": method.upper(),
            "summary": operation["summary"],
            "auth": _auth(operation),
            "parameters": operation.get("parameters", []),
            "body": _schema_name(operation.get("requestBody", {})),
            "responses": [
                (status, response["description"], _schema_name(response))
                for status, response in operation["responses"].items()
            ],
        }
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]
    schemas = [
        {
            "name": name,
            "description": schema.get("description", ""),
            "fields": [
                (field, _type(spec), field in schema.get("required", []))
                for field, spec in schema.get("properties", {}).items()
            ],
            "example": json.dumps(schema["example"], indent=2) if "example" in schema else "",
        }
        for name, schema in document["components"]["schemas"].items()
    ]
    context = {"info": document["info"], "version": document["openapi"], "endpoints": endpoints, "schemas": schemas}
    return render(request, "docs/api.html", context)


def _auth(operation: dict[str, Any]) -> str:
    security = operation.get("security")
    if security == []:
        return "No login needed."
    if security:
        return "Session login, and the X-CSRFToken header."
    return "Session login."


def _schema_name(holder: dict[str, Any]) -> str:
    for content in holder.get("content", {}).values():
        return content.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
    return ""


def _type(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return " | ".join(repr(value) for value in spec["enum"])
    kind = spec.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    return f"{kind} ({spec['format']})" if "format" in spec else kind
