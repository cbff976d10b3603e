"""Emptying one of the project's task queues on the broker (`manage.py purge_queue`).

Kombu's generic queue_purge does it on every supported broker: Redis deletes the
queue's lists, RabbitMQ purges the queue (quorum queues included), the file
broker removes the queue's message files. Only ready messages go: a task a
worker has taken (running, prefetched, unacknowledged) and RabbitMQ's delayed
retries are not in the queue. The count comes from ops.queues, the one reader of
queue depths.
"""

from __future__ import annotations

from config import celery_app
from core.errors import Refused
from ops import catalog
from ops.queues import CONNECT_TIMEOUT, on_queue, queue_depths


def check_project_queue(name: str) -> str:
    """The name, if it is one of the routing table's queues (CELERY_TASK_QUEUES); raises Refused otherwise."""
    names = catalog.queue_names()
    if name not in names:
        raise Refused(f"{name!r} is not one of this project's queues; purge one of {', '.join(names)}.")
    return name


def waiting(name: str) -> int:
    """Messages waiting in the project queue `name` (raises Refused or the broker's error)."""
    return queue_depths([check_project_queue(name)])[name]


def purge(name: str) -> int:
    """Delete the messages waiting in the project queue `name`; returns how many went."""
    check_project_queue(name)
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        return on_queue(conn, lambda channel: channel.queue_purge(name) or 0)
