"""Running tasks by hand: "Run now" on a schedule, "Retry" on a result, and manage.py run_task.

All three need the ops.run_task permission, validate like the schedule admin
does, send the task, and leave a TaskRun row saying who sent what and when.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils.module_loading import import_string
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from core import json_input
from core.errors import FieldErrors, Refused
from ops import catalog, schedule_checks
from ops.models import TaskRun
from ops.publish import recorded_arguments

RUN_PERMISSION = "ops.run_task"


# Longest wait before a task sent by hand may run. Redis redelivers a message that is
# not acknowledged within its visibility timeout (2 hours, config/settings.py), and a
# message waiting for its countdown is not acknowledged: longer waits would run twice.
MAX_COUNTDOWN = 3600


def check_countdown(countdown: float | None) -> None:
    """FieldErrors unless the countdown is None or a finite number of seconds from 0 to MAX_COUNTDOWN."""
    if countdown is None:
        return
    if not math.isfinite(countdown):
        raise FieldErrors({"countdown": ["The countdown must be a number of seconds."]})
    if countdown < 0:
        raise FieldErrors({"countdown": ["The countdown cannot be negative."]})
    if countdown > MAX_COUNTDOWN:
        raise FieldErrors({"countdown": [f"The countdown is at most {MAX_COUNTDOWN} seconds."]})


class RetryRefused(Exception):
    """This result cannot be retried; the message says why."""


def require_permission(user: Any) -> None:
    if user is not None and not user.has_perm(RUN_PERMISSION):
        raise PermissionDenied(
            "Running or retrying tasks by hand needs the 'Can run and retry tasks by hand' permission."
        )


def _send(
    invocation: catalog.Invocation,
    *,
    task_id: str,
    countdown: float | None = None,
    priority: int | None = None,
    expires: float | datetime | None = None,
    headers: dict | None = None,
    exchange: str | None = None,
    routing_key: str | None = None,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        key: value
        for key, value in {
            "queue": invocation.queue,
            "countdown": countdown,
            "priority": priority,
            "expires": expires,
            "exchange": exchange,
            "routing_key": routing_key,
        }.items()
        if value not in (None, "")
    }
    invocation.task.apply_async(invocation.args, invocation.kwargs, task_id=task_id, headers=headers or {}, **options)
    if isinstance(options.get("expires"), datetime):
        options["expires"] = options["expires"].isoformat()
    return options


def run_task(
    name: str,
    args: Any,
    kwargs: Any,
    *,
    queue: str | None = None,
    countdown: float | None = None,
    user: Any = None,
    source: str = TaskRun.Source.COMMAND,
) -> TaskRun:
    """Validate and send a task by name; raises FieldErrors or PermissionDenied."""
    require_permission(user)
    invocation = catalog.validate(name, args, kwargs, queue)
    check_countdown(countdown)
    task_id = str(uuid.uuid4())
    options = _send(invocation, task_id=task_id, countdown=countdown)
    return TaskRun.objects.create(
        task_name=name,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        options=options,
        source=source,
        requested_by=user if user is not None and user.is_authenticated else None,
    )


def run_periodic_task_now(periodic_task: PeriodicTask, *, user: Any) -> TaskRun:
    """Send a schedule's task now with everything it stores: args, kwargs, queue, priority, expires, headers."""
    require_permission(user)
    broken = {
        field: [problem]
        for field, problem in schedule_checks.problems(periodic_task).items()
        if field in ("args", "kwargs", "headers")
    }
    if broken:
        raise FieldErrors(broken)
    args, kwargs = catalog.parse_json_arguments(periodic_task.args, periodic_task.kwargs)
    invocation = catalog.validate(periodic_task.task, args, kwargs, periodic_task.queue or None)
    headers = {**json_input.loads(periodic_task.headers or "{}"), "periodic_task_name": periodic_task.name}
    task_id = str(uuid.uuid4())
    options = _send(
        invocation,
        task_id=task_id,
        priority=periodic_task.priority,
        expires=periodic_task.expire_seconds or periodic_task.expires,
        headers=headers,
        exchange=periodic_task.exchange,
        routing_key=periodic_task.routing_key,
    )
    return TaskRun.objects.create(
        task_name=periodic_task.task,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        options=options,
        source=TaskRun.Source.RUN_NOW,
        periodic_task_name=periodic_task.name,
        requested_by=user,
    )


def retry_result(result: TaskResult, *, user: Any) -> TaskRun:
    """Send a stored result's task again as a new task, with its original arguments, linked to the old one."""
    require_permission(user)
    if not result.task_name:
        raise RetryRefused("The result does not say which task it was.")
    try:
        args, kwargs = recorded_arguments(result.task_args, result.task_kwargs)
    except ValueError:
        raise RetryRefused(
            f"{result.task_id}: its arguments were not recorded as JSON when it was sent, so it cannot be retried."
        ) from None
    return retry(result.task_name, result.task_id, args, kwargs, result.periodic_task_name or "", user=user)


def retry(task_name: str, old_task_id: str, args: list, kwargs: dict, periodic_task_name: str, *, user: Any) -> TaskRun:
    """Send a task again as a new task, with the arguments it was first sent with, and record who did it.

    Domain tasks that declare `retry_with` are retried through that service (an
    order is replayed, an email resent, a report regenerated); the rest are sent
    again as they were. Raises RetryRefused when the domain says there is nothing
    to retry, FieldErrors when the arguments no longer fit the task.
    """
    require_permission(user)
    invocation = catalog.validate(task_name, args, kwargs)
    task_id = str(uuid.uuid4())
    service = getattr(invocation.task, "retry_with", None)
    with transaction.atomic():
        if service:
            try:
                subject_id = catalog.subject_id(invocation.task, args, kwargs)
                import_string(service)(subject_id, actor_id=getattr(user, "pk", None), task_id=task_id)
            except Refused as exc:
                raise RetryRefused(f"{old_task_id}: {exc}") from None
            options = {"through": service}
        else:
            options = {}
            transaction.on_commit(lambda: _send(invocation, task_id=task_id))
        return TaskRun.objects.create(
            task_name=task_name,
            task_id=task_id,
            args=args,
            kwargs=kwargs,
            options=options,
            source=TaskRun.Source.RETRY,
            retry_of=old_task_id,
            periodic_task_name=periodic_task_name,
            requested_by=user,
        )
