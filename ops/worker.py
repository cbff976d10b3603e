"""Signal handlers that run inside worker processes: database connections, publisher confirms, structured task logs."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from celery import Task, signals
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from core import dispatch
from core.sockets import is_quiet
from ops.catalog import subject_ref

logger = logging.getLogger("ops.tasks")
_started: dict[str, float] = {}
# True in a prefork worker's main process, whose children run the tasks (see ops.result_backend).
_pool_main_process = False
# True in a prefork worker's child, which runs one task at a time.
_pool_child = False


@signals.worker_init.connect(dispatch_uid="ops.worker.note_pool_main_process")
def note_pool_main_process(sender: Any = None, **kwargs: Any) -> None:
    """Remember whether this worker process hands its tasks to prefork children."""
    global _pool_main_process
    pool = getattr(sender, "pool_cls", "")  # "prefork" from the command line, or the pool class
    _pool_main_process = "prefork" in (pool if isinstance(pool, str) else pool.__module__)


@signals.worker_process_init.connect(dispatch_uid="ops.worker.note_pool_child")
def note_pool_child(**kwargs: Any) -> None:
    global _pool_main_process, _pool_child
    _pool_main_process = False
    _pool_child = True


def in_pool_main_process() -> bool:
    return _pool_main_process


@signals.task_prerun.connect(dispatch_uid="ops.worker.release_connections_before")
@signals.task_postrun.connect(dispatch_uid="ops.worker.release_connections_after")
def release_broken_connections(**kwargs: Any) -> None:
    """Close database connections that are broken or older than CONN_MAX_AGE.

    With CELERY_DB_REUSE_MAX set, Celery's Django fixup keeps the connection open
    between tasks. This is the same check Django runs around every web request:
    a connection that raised an error and is no longer usable, or one past its
    age, is closed here, so the next task opens a fresh one instead of failing.
    A connection inside a transaction is left alone: closing it would break the
    transaction (a task may store its progress from inside one; see ops.result_backend).
    """
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        connection.close_if_unusable_or_obsolete()  # what django.db.close_old_connections() does
        if connection.connection is not None and _server_said_nothing(connection):
            # close_if_unusable_or_obsolete() re-arms CONN_HEALTH_CHECKS, which costs every
            # task a "SELECT 1" round trip: profiling the Celery floor put it at a
            # fifth of a worker child's time. A server that ends a session (restart,
            # pg_terminate_backend, idle timeout) first sends a message or closes the
            # socket; while the socket has nothing to read, the connection is as good
            # as after a check, so the round trip is skipped. Otherwise Django checks.
            connection.health_check_done = True


def _server_said_nothing(connection: BaseDatabaseWrapper) -> bool:
    """True when a PostgreSQL connection's socket has nothing waiting (no error, no close); no I/O is done."""
    if connection.vendor != "postgresql" or connection.errors_occurred:
        return False
    try:
        sock = connection.connection.pgconn.socket
    except (AttributeError, psycopg.Error):
        return False
    return is_quiet(sock)


@signals.task_prerun.connect(dispatch_uid="ops.worker.confirm_at_end")
def confirm_at_end(**kwargs: Any) -> None:
    """In a prefork child, the task's sends on commit wait for their publisher confirms once it has ended.

    See core.confirms. A prefork child runs one task at a time, so a wait there
    holds up its next task. A threads worker's other threads go on while one waits;
    and each of its threads would hold a producer of the worker's pool
    (broker_pool_limit, 10) from its send to its end, where a thread that then
    needs a second one could wait for ever on the others. Its sends wait at once.
    """
    if _pool_child:
        dispatch.confirm_at_end()


@signals.task_postrun.connect(dispatch_uid="ops.worker.settle_confirms")
def settle_confirms(**kwargs: Any) -> None:
    """After the task's result is stored and before its message is acknowledged: see core.dispatch.settle_confirms."""
    dispatch.settle_confirms()


@signals.task_prerun.connect(dispatch_uid="ops.worker.start_clock")
def start_clock(task_id: str | None = None, **kwargs: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


def _duration(task_id: str | None) -> float:
    started = _started.pop(task_id, None) if task_id else None
    return time.monotonic() - started if started is not None else float("nan")


@signals.task_success.connect(dispatch_uid="ops.worker.log_success")
def log_success(sender: Task | None = None, **kwargs: Any) -> None:
    request = sender.request
    if not getattr(sender, "log_outcome", True):  # plumbing such as the liveness probe
        _duration(request.id)
        return
    logger.info(
        "task=%s id=%s state=SUCCESS duration=%.3fs object=%s",
        sender.name,
        request.id,
        _duration(request.id),
        subject_ref(sender, request.args, request.kwargs),
    )


@signals.task_retry.connect(dispatch_uid="ops.worker.log_retry")
def log_retry(sender: Task | None = None, request: Any = None, reason: Any = None, **kwargs: Any) -> None:
    logger.warning(
        "task=%s id=%s state=RETRY duration=%.3fs object=%s retries=%s reason=%s",
        sender.name,
        request.id,
        _duration(request.id),
        subject_ref(sender, request.args, request.kwargs),
        request.retries,
        reason,
    )


@signals.task_failure.connect(dispatch_uid="ops.worker.log_failure")
def log_failure(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **extra: Any,
) -> None:
    logger.error(
        "task=%s id=%s state=FAILURE duration=%.3fs object=%s error=%s: %s",
        sender.name,
        task_id,
        _duration(task_id),
        subject_ref(sender, args, kwargs),
        type(exception).__name__,
        exception,
    )
