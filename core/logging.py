"""Logging helpers shared by all processes."""

from __future__ import annotations

import logging

from celery import current_task


class TaskContextFilter(logging.Filter):
    """Add ``task_ref`` ("name[id] " inside a task, empty elsewhere) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        request_id = task.request.id if task else None
        record.task_ref = f"{task.name}[{request_id}] " if request_id else ""
        return True
