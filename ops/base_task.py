"""The base class of every task in the project (set as task_cls in config/celery.py)."""

from __future__ import annotations

from typing import Any

from celery.contrib.django.task import DjangoTask
from django.db import DatabaseError, close_old_connections


class ProjectTask(DjangoTask):
    """DjangoTask (delay_on_commit) with retry defaults that suit retry_on_worker_lost."""

    # task_retry_on_worker_lost resends a task whose worker child died after
    # default_retry_delay seconds. Celery's default is 180 s, far too long for an
    # order that merely lost its process; a few seconds lets a fresh child pick it up.
    default_retry_delay = 5
    # Worker-lost retries count against this too, so a task that kills its worker
    # every time fails after a few attempts instead of being redelivered forever.
    max_retries = 3

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DatabaseError:
            # The result backend stores the failure on this same connection right
            # after the body returns, before task_postrun; if the error broke the
            # connection, close it now so that the failure is recorded on a new one.
            close_old_connections()
            raise
