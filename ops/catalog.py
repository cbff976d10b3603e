"""What tasks exist and what they accept: the one check behind the schedule admin, "Run now", "Retry" and run_task."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from celery import Task
from django.apps import apps
from django.conf import settings
from django.db.models import Model

from config import celery_app
from core import dispatch, json_input
from core.errors import FieldErrors

# Celery's own task that beat installs when result_expires is set; staff may edit its schedule.
BUILTIN_PERIODIC_TASKS = ("celery.backend_cleanup",)


def project_tasks() -> dict[str, Task]:
    """Registered tasks from this project's apps (plus beat's result cleanup), by name."""
    celery_app.loader.import_default_modules()
    prefixes = tuple(f"{config.name}.tasks." for config in apps.get_app_configs())
    return {
        name: task
        for name, task in sorted(celery_app.tasks.items())
        if name.startswith(prefixes) or name in BUILTIN_PERIODIC_TASKS
    }


def queue_names() -> list[str]:
    """The task queues of the routing table (CELERY_TASK_QUEUES), in their order."""
    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


@dataclass(frozen=True)
class Invocation:
    task: Task
    args: list
    kwargs: dict
    queue: str | None = None


def parse_json_arguments(args_text: str | None, kwargs_text: str | None) -> tuple[Any, Any]:
    """Parse --args/--kwargs style JSON text; raise FieldErrors naming the field."""
    errors: dict[str, list[str]] = {}
    parsed = []
    for field, text, default in (("args", args_text, []), ("kwargs", kwargs_text, {})):
        try:
            parsed.append(json_input.loads(text) if text not in (None, "") else default)
        except json_input.JsonInputError as exc:
            errors[field] = [str(exc)]
            parsed.append(default)
    if errors:
        raise FieldErrors(errors)
    return parsed[0], parsed[1]


def validate(name: str, args: Any, kwargs: Any, queue: str | None = None) -> Invocation:
    """Check that `name` is a project task, that args/kwargs bind to its signature and that the queue exists."""
    errors: dict[str, list[str]] = {}
    task = project_tasks().get(name)
    if task is None:
        errors["task"] = [f"{name!r} is not a registered task of this project."]
    if not isinstance(args, list):
        errors["args"] = ["Give the positional arguments as a JSON list, e.g. [42] or []."]
    if not isinstance(kwargs, dict):
        errors["kwargs"] = ['Give the keyword arguments as a JSON object, e.g. {"order_id": 42} or {}.']
    if task is not None and "args" not in errors and "kwargs" not in errors:
        try:
            inspect.signature(task.run).bind(*args, **kwargs)
        except TypeError as exc:
            errors["args"] = [f"These arguments do not fit {name}{inspect.signature(task.run)}: {exc}."]
    if queue and queue not in queue_names():
        errors["queue"] = [f"{queue!r} is not a queue; use one of {', '.join(queue_names())}."]
    if errors:
        raise FieldErrors(errors)
    return Invocation(task=task, args=args, kwargs=kwargs, queue=queue or None)


def subject_id(task: Task | None, args: Any, kwargs: Any) -> Any:
    """The id of the domain object a task works on, bound from its arguments by its `subject` declaration.

    A task declares subject=("orders.Order", "order_id"); this binds the call's
    arguments to the task's signature and returns that argument, or None when
    the task declares no subject or the arguments do not fit.
    """
    declared = getattr(task, "subject", None)
    if not declared:
        return None
    try:
        bound = inspect.signature(task.run).bind(*(args or ()), **(kwargs or {}))
    except TypeError:
        return None
    return bound.arguments.get(declared[1])


def registered(task_name: str) -> Task | None:
    """The task called `task_name`, with the task modules imported if this process has not yet; None if none is."""
    try:
        return dispatch.task(task_name)
    except LookupError:  # a task this code base no longer has
        return None


def subject_of(task_name: str, args: list, kwargs: dict) -> Model | None:
    """The domain object a task works on (order, notification, report...), from its `subject` declaration."""
    task = registered(task_name)
    pk = subject_id(task, args, kwargs)
    if pk is None:
        return None
    try:
        return apps.get_model(task.subject[0]).objects.filter(pk=pk).first()
    except (ValueError, LookupError):
        return None


def subject_ref(task: Task, args: Any, kwargs: Any) -> str:
    """'orders.Order:42' for a task that declares its subject, else '-' (no database access, for logs)."""
    pk = subject_id(task, args, kwargs)
    return "-" if pk is None else f"{task.subject[0]}:{pk}"
