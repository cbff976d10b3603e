"""Signal handlers that run inside worker processes."""

from __future__ import annotations

from typing import Any

from celery import signals
from django.db import close_old_connections


@signals.task_prerun.connect(dispatch_uid="ops.worker.release_connections_before")
@signals.task_postrun.connect(dispatch_uid="ops.worker.release_connections_after")
def release_broken_connections(**kwargs: Any) -> None:
    """Close database connections that are broken or older than CONN_MAX_AGE.

    With CELERY_DB_REUSE_MAX set, Celery's Django fixup keeps the connection open
    between tasks. This is the same check Django runs around every web request:
    a connection that raised an error and is no longer usable, or one past its
    age, is closed here, so the next task opens a fresh one instead of failing.
    """
    close_old_connections()
