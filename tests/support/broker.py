"""The real Redis broker in tests: reading its queues, and sweeping after an outage."""

from __future__ import annotations

import json
import time

import redis
from django.db.models import Model

from tests.support.processes import wait_for

# Kombu's Redis transport keeps a message with priority N in a list of its own:
# "<queue>\x06\x16<step>" for the steps 3, 6 and 9.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]


def messages_in(client: redis.Redis, queue: str) -> list[dict]:
    """Every message waiting in a queue, whatever its priority, decoded."""
    return [json.loads(raw) for key in queue_keys(queue) for raw in client.lrange(key, 0, -1)]


def idle(client: redis.Redis) -> bool:
    """No task waits in the project's queues and none is delivered but unacknowledged (running, or held for a countdown).

    Tasks acknowledge late, so a message stays in Kombu's "unacked" hash until its
    task has finished. Between the pop from a queue and the entry in that hash
    there is a moment where a message is in neither, so the check is made twice.
    """
    from django.conf import settings

    def nothing_left() -> bool:
        queues = [key for queue in settings.CELERY_TASK_QUEUES for key in queue_keys(queue.name)]
        return not any(client.llen(key) for key in queues) and not client.hlen("unacked")

    if not nothing_left():
        return False
    time.sleep(0.2)
    return nothing_left()


def wait_until_idle(client: redis.Redis, what: str, timeout: float = 60) -> None:
    """Wait until every task sent so far has finished (see idle)."""
    wait_for(lambda: idle(client), timeout, 0.1, f"every task to finish: {what}")


def sweep_until(broker_url: str, task_name: str, row: Model, status: str, what: str, timeout: float = 90) -> None:
    """Send the sweep `task_name` through the broker at `broker_url` once a second until `row` reaches `status`.

    For the tests where the broker was down: what was lost is recovered by a
    sweep that beat would run, sent here directly to the restarted broker.
    """
    from config import celery_app

    with celery_app.connection_for_write(broker_url) as connection:

        def swept_and_reached() -> bool:
            celery_app.send_task(task_name, connection=connection)
            time.sleep(1)
            row.refresh_from_db()
            return row.status == status

        wait_for(swept_and_reached, timeout, 0, what)
