"""What each worker runs right now, with the object each task works on (`manage.py active_tasks`).

Celery's `inspect active` is a broadcast on the broker's control exchange: every
worker answers with the requests its pool is running, on Redis, RabbitMQ and the
file broker alike. Only workers that answer within the timeout are listed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from config import celery_app
from ops import catalog
from ops.health import ping_timeout

# A broker that does not answer within this long is down, for an operator at a terminal.
CONNECT_TIMEOUT = 2


@dataclass(frozen=True)
class RunningTask:
    id: str
    name: str
    queue: str | None
    started_seconds_ago: float | None
    subject: str | None  # 'orders.Order 42 "Order #42 ..."', or None when the task declares none


@dataclass(frozen=True)
class WorkerTasks:
    worker: str
    tasks: list[RunningTask]


def active_tasks(timeout: float | None = None) -> list[WorkerTasks]:
    """Ask every worker what it runs now; raises the broker's error when the broker cannot be reached."""
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        inspector = celery_app.control.inspect(timeout=timeout or ping_timeout(), connection=conn)
        replies: dict[str, list[dict[str, Any]]] = inspector.active() or {}
    now = time.time()
    return [WorkerTasks(worker, [_running(request, now) for request in replies[worker]]) for worker in sorted(replies)]


def _running(request: dict[str, Any], now: float) -> RunningTask:
    started = request.get("time_start")
    return RunningTask(
        id=request.get("id") or "?",
        name=request.get("name") or "?",
        queue=(request.get("delivery_info") or {}).get("routing_key"),
        started_seconds_ago=max(0.0, now - started) if started else None,
        subject=_subject(request),
    )


def _subject(request: dict[str, Any]) -> str | None:
    args, kwargs = request.get("args"), request.get("kwargs")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return None  # an argument repr from an old worker, not the values
    target = catalog.subject_of(request.get("name") or "", list(args), kwargs)
    if target is not None:
        return f"{target._meta.label} {target.pk} {str(target)!r}"
    task = catalog.registered(request.get("name") or "")
    pk = catalog.subject_id(task, args, kwargs)
    return None if pk is None else f"{task.subject[0]} {pk} (no such row)"
