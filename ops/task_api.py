"""The staff task API: what a task is doing, and stopping it. Every call is audited.

GET /api/tasks/<id>/ reads a task as Celery does (AsyncResult: the state that
`manage.py run_task --wait` waits on), with its progress, its result or error,
and the object it works on. DELETE /api/tasks/<id>/ revokes a task that has not
started, so no worker runs it (workers keep revoked ids in their state file,
CELERY_WORKER_STATE_DB, across restarts), and asks a running one to stop where
its domain allows: a task that declares `cancel_with` names the domain service
that stops its work, called with the subject's id and the staff member's id
(`actor_id`): an order is cancelled while its charge has not started, a
campaign is cancelled; other running tasks run to their end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.result import AsyncResult
from django.utils.module_loading import import_string
from django_celery_results.models import TaskResult

from config import celery_app
from core.errors import Refused
from ops import catalog, runs
from ops.models import TaskApiCall, TaskRun
from ops.publish import recorded_arguments

logger = logging.getLogger(__name__)

# A task in one of these states has started (or is between retries) and has not finished.
RUNNING_STATES = frozenset({states.STARTED, "PROGRESS"})


@dataclass(frozen=True)
class Known:
    """What the project recorded about a task id: its name and arguments, from its result or a run by hand."""

    name: str | None
    args: list
    kwargs: dict


def _known(task_id: str) -> Known:
    stored = TaskResult.objects.filter(task_id=task_id).only("task_name", "task_args", "task_kwargs").first()
    if stored is not None and stored.task_name:
        try:
            args, kwargs = recorded_arguments(stored.task_args, stored.task_kwargs)
        except ValueError:
            args, kwargs = [], {}
        return Known(stored.task_name, args, kwargs)
    run = TaskRun.objects.filter(task_id=task_id).first()
    if run is not None:
        return Known(run.task_name, list(run.args), dict(run.kwargs))
    return Known(None, [], {})


def describe(task_id: str, *, user: Any) -> dict[str, Any]:
    """A task as staff see it in the API: Celery's state, progress, result or error, and its subject. Audited."""
    result = AsyncResult(task_id, app=celery_app)
    state = result.state
    known = _known(task_id)
    body: dict[str, Any] = {
        "id": task_id,
        "task": known.name,
        "state": state,
        "known": known.name is not None or state != states.PENDING,
        "progress": result.info if state == "PROGRESS" and isinstance(result.info, dict) else None,
        "result": result.result if state == states.SUCCESS else None,
        "error": _error(result) if state in states.PROPAGATE_STATES else None,
        "subject": _subject(known),
    }
    _audit(task_id, TaskApiCall.Action.VIEW, user, state)
    return body


def _error(result: AsyncResult) -> dict[str, str]:
    info = result.info
    kind = type(info).__name__ if isinstance(info, BaseException) else "Error"
    return {"type": kind, "message": str(info)}


def _subject(known: Known) -> dict[str, Any] | None:
    if known.name is None:
        return None
    target = catalog.subject_of(known.name, known.args, known.kwargs)
    if target is None:
        return None
    return {"model": target._meta.label, "id": target.pk, "name": str(target)}


@dataclass(frozen=True)
class Stop:
    state: str  # the task's state when it was asked
    outcome: str  # what was done, for people


def stop(task_id: str, *, user: Any) -> Stop:
    """Revoke a task that has not started; ask a running one to stop through its domain. Raises Refused. Audited."""
    runs.require_permission(user)
    state = AsyncResult(task_id, app=celery_app).state
    try:
        if state in states.READY_STATES:
            raise Refused(f"The task has finished already ({state}); there is nothing to stop.")
        # Never starts (again): a waiting message, a retry's countdown, a redelivery after a crash.
        celery_app.control.revoke(task_id)
        outcome = "revoked: no worker will start it"
        if state in RUNNING_STATES:
            outcome = _stop_running(task_id, user)
    except Refused as exc:
        _audit(task_id, TaskApiCall.Action.STOP, user, f"refused ({state}): {exc}")
        raise
    _audit(task_id, TaskApiCall.Action.STOP, user, f"{state}: {outcome}")
    logger.info("task %s (%s) stopped by user %s: %s", task_id, state, getattr(user, "pk", None), outcome)
    return Stop(state, outcome)


def _stop_running(task_id: str, user: Any) -> str:
    known = _known(task_id)
    # Imports the tasks modules first: a web process that never sent a report task has not registered them yet.
    task = catalog.registered(known.name or "")
    service = getattr(task, "cancel_with", None)
    subject_id = catalog.subject_id(task, known.args, known.kwargs)
    if not service or subject_id is None:
        return "revoked, but it is running and cannot be stopped mid-way: it runs to its end"
    import_string(service)(subject_id, actor_id=getattr(user, "pk", None))  # who cancelled, on the row as in the admin
    return f"running: asked {service} to stop its work on {task.subject[0]} {subject_id}"


def _audit(task_id: str, action: str, user: Any, outcome: str) -> None:
    TaskApiCall.objects.create(task_id=task_id[:255], action=action, actor=user, outcome=outcome[:500])
