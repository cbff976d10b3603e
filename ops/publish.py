"""Record a task's real arguments as JSON when it is sent, so that staff can retry it later.

Celery puts a truncated Python repr of the arguments in the message's argsrepr
and kwargsrepr headers, and django-celery-results stores exactly those as
TaskResult.task_args / task_kwargs. That repr cannot be parsed back. This
before_task_publish handler replaces both headers with the arguments as JSON
(they are JSON already: the serializer is JSON only), so a stored result holds
arguments that "Retry" can send again.
"""

from __future__ import annotations

import json
from typing import Any

from celery import signals

# Arguments bigger than this are not copied into the headers (and so cannot be
# retried from a result); a chord callback's partial results can be large.
MAX_RECORDED_BYTES = 16 * 1024
TOO_LARGE = "<arguments too large to record>"


@signals.before_task_publish.connect(dispatch_uid="ops.publish.record_json_arguments")
def record_json_arguments(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
    if not headers or "argsrepr" not in headers or not isinstance(body, (tuple, list)) or len(body) < 2:
        return  # not a protocol-2 task message
    args, kwargs = body[0], body[1]
    for header, value in (("argsrepr", list(args)), ("kwargsrepr", dict(kwargs))):
        text = json.dumps(value, separators=(",", ":"))
        headers[header] = text if len(text) <= MAX_RECORDED_BYTES else TOO_LARGE


def recorded_arguments(task_args: str | None, task_kwargs: str | None) -> tuple[list, dict]:
    """The JSON arguments a stored result carries; ValueError when they were not recorded as JSON."""
    values = []
    for stored, expected in ((task_args, list), (task_kwargs, dict)):
        text = json.loads(stored) if stored else ("[]" if expected is list else "{}")
        # django-celery-results stores the header JSON-encoded, so it decodes to our JSON text.
        value = json.loads(text) if isinstance(text, str) else text
        if not isinstance(value, expected):
            raise ValueError("the arguments were not recorded as JSON")
        values.append(value)
    return values[0], values[1]
