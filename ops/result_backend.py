"""The result backend, made to survive a database restart in every worker process.

Set as CELERY_RESULT_BACKEND. How a state is stored is core.results' (one upsert);
this module decides on which connection. Two kinds of process write task states:

* A pool child stores the outcome of each task it runs. A connection that broke
  while the task waited on something else (PostgreSQL restarted during a slow
  gateway call) is replaced before the outcome is stored, with the same check
  ops.worker runs around every task.
* The prefork pool's main process stores what Celery decides there: the retry of
  a task whose child died, a hard time limit, a revoke. It does so rarely, and
  each write comes *before* Celery acknowledges the message. So there, every
  write gets a connection of its own that is closed right after, and a write
  that fails is logged instead of raised. A kept connection would die in a
  database restart and fail every later write: Celery then skips the
  acknowledgement, the message holds a prefetch slot for ever, and the worker
  answers pings but takes no work (celery/celery#5563). Children forked later
  would also inherit the dead connection, which Celery's Django fixup cannot
  close (celery/celery#9310). A state row lost this way is only bookkeeping:
  the retried task stores its own outcome, and the domain rows (order,
  notification, report) hold the truth.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from celery import states
from django.db import DatabaseError, connections

from core.results import UpsertDatabaseBackend
from ops import failures, worker

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _connection_for_this_call() -> Iterator[None]:
    """Close every database connection this call opened, so the main process keeps none between calls."""
    try:
        yield
    finally:
        for connection in connections.all(initialized_only=True):
            with contextlib.suppress(DatabaseError):
                connection.close()


class DatabaseBackend(UpsertDatabaseBackend):
    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None, **kwargs: Any
    ) -> Any:
        if not worker.in_pool_main_process():
            worker.release_broken_connections()
            return self._store_and_record(task_id, result, state, traceback, request, **kwargs)
        with _connection_for_this_call():
            try:
                return self._store_and_record(task_id, result, state, traceback, request, **kwargs)
            except DatabaseError as exc:
                logger.error(
                    "task %s: the worker's main process could not store its state %s (%s: %s); "
                    "its message is acknowledged all the same",
                    task_id,
                    state,
                    type(exc).__name__,
                    exc,
                )
                return result

    def _store_and_record(
        self, task_id: str, result: Any, state: str, traceback: str | None, request: Any, **kwargs: Any
    ) -> Any:
        """Store the state; a FAILURE is also recorded where staff find, replay or dismiss it (ops.failures)."""
        stored = super().store_result(task_id, result, state, traceback, request, **kwargs)
        if state == states.FAILURE and request is not None:
            try:
                failures.record(
                    task_id=task_id,
                    task_name=_task_name(request),
                    error=result,
                    args=getattr(request, "args", None),
                    kwargs=getattr(request, "kwargs", None),
                    periodic_task_name=getattr(request, "periodic_task_name", None) or "",
                )
            except DatabaseError:
                # The result row holds the failure; only the failures page misses it.
                logger.exception("task %s: its failure could not be recorded for the failures page", task_id)
        return stored

    def _get_task_meta_for(self, task_id: str) -> dict:
        # The main process reads a result after losing a child, to tell a task that
        # finished from one that died; Celery treats a failed read as "not finished".
        if not worker.in_pool_main_process():
            return super()._get_task_meta_for(task_id)
        with _connection_for_this_call():
            return super()._get_task_meta_for(task_id)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        if not worker.in_pool_main_process():
            return super().on_chord_part_return(request, state, result, **kwargs)
        with _connection_for_this_call():
            try:
                return super().on_chord_part_return(request, state, result, **kwargs)
            except DatabaseError as exc:
                logger.error(
                    "task %s: the worker's main process could not count it in its chord (%s: %s)",
                    getattr(request, "id", None),
                    type(exc).__name__,
                    exc,
                )
                return None


def _task_name(request: Any) -> str:
    """The task's name, from a task's own request (a name) or from the worker's Request (a task object)."""
    name = getattr(request, "task_name", None) or getattr(request, "task", None) or ""
    return name if isinstance(name, str) else getattr(name, "name", "")
