"""django-celery-results' database backend, storing each task state with one upsert instead of get-or-create.

The library stores a state with get_or_create and then save(): a SELECT, an
INSERT (or an UPDATE), and a commit, for every state of every task that keeps
results. Here each state is one INSERT ... ON CONFLICT (task_id) DO UPDATE,
which also cannot lose the race between two workers storing the same task that
the library retries around. Everything else is the library's own: the
TaskResult model and its fields, the admin, groups and chords.
"""

from __future__ import annotations

from typing import Any

from celery import states
from django.db.models.functions import Now
from django_celery_results.backends.database import DatabaseBackend

# Set on insert only: an update never moves when the task was first seen.
_INSERT_ONLY = {"id", "task_id", "date_created"}


class UpsertDatabaseBackend(DatabaseBackend):
    """The django-db result backend (CELERY_RESULT_BACKEND), one statement per stored state."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        status: str,
        traceback: str | None = None,
        request: Any = None,
        using: str | None = None,
    ) -> Any:
        """Store a state's result, status and (with result_extended) its task's name, arguments and worker."""
        content_type, content_encoding, encoded = self.encode_content(result)
        meta = {**self._get_meta_from_request(request), "children": self.current_task_children(request)}
        fields = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "result": encoded,
            "status": status,
            "traceback": traceback,
            "meta": self.encode_content(meta)[2],
            **self._get_extended_properties(request, traceback),
        }
        if status == states.STARTED:
            fields["date_started"] = Now()
        model = self.TaskModel
        row = model(task_id=task_id, **fields)
        # date_done (auto_now) is refreshed on every state; date_started only by STARTED.
        changed = [field.name for field in model._meta.concrete_fields if field.name not in _INSERT_ONLY]
        if "date_started" not in fields:
            changed.remove("date_started")
        model._default_manager.using(using).bulk_create(
            [row], update_conflicts=True, unique_fields=["task_id"], update_fields=changed
        )
        return result
