"""Emptying one of the project's task queues on the broker (`manage.py purge_queue`).

Kombu's generic queue_purge does it on every supported broker: Redis deletes the
queue's lists, RabbitMQ purges the queue (quorum queues included), the file
broker removes the queue's message files. Only ready messages go: a task a
worker has taken (running, prefetched, unacknowledged) and RabbitMQ's delayed
retries are not in the queue. The count comes from ops.queues, the one reader of
queue depths.
"""

from __future__ import annotations

import contextlib

from config import celery_app
from core.errors import Refused
from ops.queues import CONNECT_TIMEOUT, project_queue_names, queue_depth


def check_project_queue(name: str) -> str:
    """The name, if it is one of the routing table's queues (CELERY_TASK_QUEUES); raises Refused otherwise."""
    names = project_queue_names()
    if name not in names:
        raise Refused(f"{name!r} is not one of this project's queues; purge one of {', '.join(names)}.")
    return name


def waiting(name: str) -> int:
    """Messages waiting in the project queue `name` (raises Refused or the broker's error)."""
    check_project_queue(name)
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        return queue_depth(conn, name)


def purge(name: str) -> int:
    """Delete the messages waiting in the project queue `name`; returns how many went."""
    check_project_queue(name)
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        if conn.transport.driver_type != "amqp":
            return conn.default_channel.queue_purge(name) or 0
        # On RabbitMQ a queue no worker has declared yet does not exist (404 closes
        # the channel), and holds nothing: a channel of its own, as ops.queues does.
        channel = conn.channel()
        try:
            return channel.queue_purge(name) or 0
        except conn.channel_errors as exc:
            if getattr(exc, "code", None) == 404:
                return 0
            raise
        finally:
            with contextlib.suppress(Exception):  # the broker may have closed it already
                channel.close()
