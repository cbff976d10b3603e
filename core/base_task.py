"""The base class of every task in the project (task_cls in config/celery.py), and what it tells services."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery.contrib.django.task import DjangoTask
from celery.utils.time import get_exponential_backoff_interval
from django.db import DatabaseError, close_old_connections

from core.errors import PermanentFailure, TransientError

Result = TypeVar("Result")


@dataclass(frozen=True)
class Attempt:
    """The run of a task that calls a service: who holds the work, and what happens after a transient error."""

    task_id: str
    # No retry follows: a transient error now fails the work for good (after compensation).
    is_last: bool = False
    # Seconds until the retry that a transient error schedules; the work's lease is held that long.
    retry_in: int = 0


class ProjectTask(DjangoTask):
    """DjangoTask (delay_on_commit) with retry defaults that suit retry_on_worker_lost, and the service call."""

    # task_retry_on_worker_lost resends a task whose worker child died after
    # default_retry_delay seconds. Celery's default is 180 s, far too long for an
    # order that merely lost its process; a few seconds lets a fresh child pick it up.
    default_retry_delay = 5
    # Worker-lost retries count against this too, so a task that kills its worker
    # every time fails after a few attempts instead of being redelivered forever.
    max_retries = 3
    # The domain's own failures end a task in FAILURE without an error traceback in the logs.
    throws = (PermanentFailure,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DatabaseError:
            # The result backend stores the failure on this same connection right
            # after the body returns, before task_postrun; if the error broke the
            # connection, close it now so that the failure is recorded on a new one.
            close_old_connections()
            raise

    def call_service(self, service: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        """Call `service` with this run's Attempt; retry a TransientError it raises, with backoff and jitter.

        The countdown is computed before the call and handed to the service, so
        the service can hold the work's lease through it (no sweep re-sends the
        work while the retry waits).
        """
        attempt = Attempt(task_id=self.request.id, is_last=self.is_last_attempt(), retry_in=self.retry_countdown())
        try:
            return service(*args, attempt=attempt, **kwargs)
        except TransientError as exc:
            raise self.retry(exc=exc, countdown=attempt.retry_in) from exc

    def is_last_attempt(self) -> bool:
        return self.max_retries is not None and self.request.retries >= self.max_retries

    def retry_countdown(self) -> int:
        """Seconds until the next retry: exponential backoff with full jitter, from the decorator's options.

        Uses retry_backoff (base seconds), retry_backoff_max and retry_jitter exactly
        as Celery's autoretry would.
        """
        return get_exponential_backoff_interval(
            factor=int(self.retry_backoff),
            retries=self.request.retries,
            maximum=self.retry_backoff_max,
            full_jitter=self.retry_jitter,
        )
