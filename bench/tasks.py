"""The benchmark's own task: a no-op through the project's Celery settings (the "Celery floor").

Workers load it with `-I bench.tasks`; the product never imports it.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bench.noop")
def noop() -> None:
    """Do nothing: what is left is the cost of Celery, the broker and the result backend."""
