"""Which workers are online and which queues each consumes: one broadcast, reused while it is recent.

Asking the workers is a broadcast and a PING_TIMEOUT wait for their replies. A
load balancer polling /health/ and Prometheus scraping /metrics would each pay
that wait on every call, so the answer is kept in the database (RecentAnswer,
shared by every web process) and asked again only once it is older than
WORKER_PING_MAX_AGE. Every reader gets the answer's age with it.

The question is `inspect active_queues` rather than `ping`: it reaches the same
workers in the same single broadcast, and also says which queues each one
consumes, so "no worker consumes low_priority" can be told apart from "no
worker at all".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from config import celery_app
from ops.health import PING_TIMEOUT, Part
from ops.models import RecentAnswer

logger = logging.getLogger(__name__)

KEY = "workers"


@dataclass(frozen=True)
class Census:
    # worker name -> the queues it consumes; empty when none answered
    workers: dict[str, list[str]]
    asked_at: datetime
    # why the workers could not be asked (the broker is down); None when they could
    error: str | None = None

    @property
    def online(self) -> list[str]:
        return sorted(self.workers)

    def age_seconds(self, now: datetime | None = None) -> float:
        return max(((now or timezone.now()) - self.asked_at).total_seconds(), 0.0)

    def workers_per_queue(self) -> dict[str, int]:
        """Every configured queue with the number of online workers consuming it (0 included)."""
        counts = {queue.name: 0 for queue in settings.CELERY_TASK_QUEUES}
        for queues in self.workers.values():
            for queue in queues:
                if queue in counts:
                    counts[queue] += 1
        return counts

    def as_answer(self) -> dict[str, object]:
        return {"workers": self.workers, "error": self.error}


def ask() -> Census:
    """Broadcast `active_queues` and wait PING_TIMEOUT for the replies (the slow part)."""
    asked_at = timezone.now()
    try:
        # A connection of its own, as health.workers() explains: on a reused one
        # Kombu drops the replies to the second broadcast.
        with celery_app.connection_for_write() as conn:
            replies = celery_app.control.inspect(timeout=PING_TIMEOUT, connection=conn).active_queues() or {}
    except Exception as exc:  # the broker is down, so no worker can be reached either
        return Census({}, asked_at, str(exc))
    workers = {name: sorted(queue["name"] for queue in queues or []) for name, queues in replies.items()}
    return Census(workers, asked_at)


def recent(max_age: float | None = None) -> Census:
    """The last census if younger than `max_age` seconds (WORKER_PING_MAX_AGE), else a new one, stored for the others."""
    max_age = settings.WORKER_PING_MAX_AGE.total_seconds() if max_age is None else max_age
    try:
        row = RecentAnswer.objects.filter(key=KEY).first()
    except DatabaseError as exc:
        logger.warning("cannot read the last worker census, asking the workers: %s", exc)
        return ask()
    if row is not None and (timezone.now() - row.asked_at).total_seconds() < max_age:
        return Census(row.answer.get("workers", {}), row.asked_at, row.answer.get("error"))
    census = ask()
    try:
        RecentAnswer.objects.update_or_create(
            key=KEY, defaults={"answer": census.as_answer(), "asked_at": census.asked_at}
        )
    except DatabaseError as exc:  # the answer is still good for this caller
        logger.warning("cannot store the worker census: %s", exc)
    return census


def workers_part(census: Census | None = None) -> Part:
    """The readiness of the workers, from the recent census: ok when at least one answered."""
    census = census or recent()
    age = round(census.age_seconds(), 1)
    data = {"online": census.online, "queues": census.workers_per_queue(), "age_seconds": age}
    if census.error:
        return Part(False, f"cannot ping workers: {census.error}", data)
    if not census.workers:
        return Part(False, f"no worker answered a ping within {PING_TIMEOUT}s ({age:.0f}s ago)", data)
    idle = [queue for queue, count in data["queues"].items() if count == 0]
    detail = f"{len(census.workers)} worker(s) online ({age:.0f}s ago)"
    if idle:
        detail += f"; no worker consumes {', '.join(idle)}"
    return Part(True, detail, data)
