"""Work that failed for good, in one place: recorded, grouped by error, replayed or dismissed, and expired.

Every task that ends in FAILURE is recorded here by the result backend
(ops.result_backend), whatever the task and whichever process saw it end: an
unexpected error, a retry limit reached, a hard time limit, and the domain's own
failures (a declined order, a refused email), which the tasks raise as
core.errors.PermanentFailure after their service has compensated. Failures
outlive task results (FAILURE_RETENTION), are grouped by what went wrong, and are
replayed through the domain's own replay with the same permission and audit as
"Retry" on a task result.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min, QuerySet
from django.utils import timezone

from core.errors import FieldErrors
from ops import catalog, runs
from ops.models import Failure

logger = logging.getLogger(__name__)

# How much of the error text is kept, and shown as the group's label.
LABEL_LENGTH = 200
# Objects named on a group of the failures page; the rest is a count.
OBJECTS_SHOWN = 10
CLEANUP_BATCH_SIZE = 5000

_VARYING = [
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<address>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\d+(\.\d+)?"), "#"),
    (re.compile(r"\s+"), " "),
]


def label_for(message: str) -> str:
    """The error text without what varies from one failure to the next (numbers, ids, addresses)."""
    text = message.strip().splitlines()[0] if message.strip() else ""
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text[:LABEL_LENGTH]


def fingerprint(task_name: str, error_type: str, label: str) -> str:
    return hashlib.sha256(f"{task_name}\n{error_type}\n{label}".encode()).hexdigest()[:32]


def record(
    *,
    task_id: str,
    task_name: str,
    error: BaseException | str,
    args: Any = (),
    kwargs: Any = None,
    periodic_task_name: str = "",
    failed_at: datetime | None = None,
) -> Failure:
    """Record that a task failed for good (once per task id: a later record of the same task updates it)."""
    error_type = type(error).__name__ if isinstance(error, BaseException) else "Error"
    message = str(error)
    label = label_for(message) or error_type
    args, kwargs = list(args or ()), dict(kwargs or {})
    task = catalog.registered(task_name)
    subject = catalog.subject_id(task, args, kwargs)
    failure, _ = Failure.objects.update_or_create(
        task_id=task_id,
        defaults={
            "task_name": task_name,
            "args": args,
            "kwargs": kwargs,
            "periodic_task_name": periodic_task_name or "",
            "subject_label": task.subject[0] if subject is not None else "",
            "subject_id": "" if subject is None else str(subject),
            "error_type": error_type,
            "error": message,
            "label": label,
            "fingerprint": fingerprint(task_name, error_type, label),
            "failed_at": failed_at or timezone.now(),
            "status": Failure.Status.OPEN,
        },
    )
    return failure


@dataclass(frozen=True)
class Group:
    """Open failures with the same task, error type and error text."""

    fingerprint: str
    task_name: str
    error_type: str
    label: str
    count: int
    first_seen: datetime
    last_seen: datetime
    objects: list[tuple[str, str]]  # (subject label, subject id), at most OBJECTS_SHOWN


def groups(failures: QuerySet[Failure] | None = None) -> list[Group]:
    """Open failures grouped by fingerprint, the largest group first."""
    failures = Failure.objects.filter(status=Failure.Status.OPEN) if failures is None else failures
    rows = (
        failures.values("fingerprint", "task_name", "error_type", "label")
        .annotate(count=Count("pk"), first_seen=Min("failed_at"), last_seen=Max("failed_at"))
        .order_by("-count", "-last_seen")
    )
    found = []
    for row in rows:
        objects = list(
            failures.filter(fingerprint=row["fingerprint"])
            .exclude(subject_id="")
            .order_by("-failed_at")
            .values_list("subject_label", "subject_id")[:OBJECTS_SHOWN]
        )
        found.append(Group(objects=objects, **row))
    return found


@dataclass(frozen=True)
class Replayed:
    replayed: list[Failure]
    refused: dict[str, str]  # task id -> why it could not be replayed


def replay(failures: QuerySet[Failure], *, user: Any) -> Replayed:
    """Replay open failures through their domain's replay (ops.run_task, audited as a TaskRun), each once."""
    runs.require_permission(user)
    replayed, refused = [], {}
    for failure in failures.filter(status=Failure.Status.OPEN):
        try:
            run = runs.retry(
                failure.task_name, failure.task_id, failure.args, failure.kwargs, failure.periodic_task_name, user=user
            )
        except (runs.RetryRefused, FieldErrors) as exc:
            refused[failure.task_id] = str(exc)
            continue
        Failure.objects.filter(pk=failure.pk).update(
            status=Failure.Status.REPLAYED, replayed_as=run.task_id, resolved_by=user, resolved_at=timezone.now()
        )
        replayed.append(failure)
    return Replayed(replayed, refused)


def dismiss(failures: QuerySet[Failure], *, user: Any, note: str) -> int:
    """Mark open failures as dealt with, saying why; returns how many."""
    note = note.strip()
    if not note:
        raise FieldErrors({"note": ["Say why these failures need no replay."]})
    with transaction.atomic():
        return failures.filter(status=Failure.Status.OPEN).update(
            status=Failure.Status.DISMISSED, note=note, resolved_by=user, resolved_at=timezone.now()
        )


def cleanup() -> int:
    """Delete failures older than FAILURE_RETENTION, in batches; returns how many."""
    old = Failure.objects.filter(failed_at__lt=timezone.now() - settings.FAILURE_RETENTION)
    deleted = 0
    while ids := list(old.values_list("pk", flat=True)[:CLEANUP_BATCH_SIZE]):
        deleted += Failure.objects.filter(pk__in=ids).delete()[0]
    logger.info("failure cleanup deleted %s failures older than FAILURE_RETENTION", deleted)
    return deleted
