"""How many messages wait in a queue, read from the broker itself, whichever broker it is.

One reader for every caller (/health/, /metrics, the overview, `manage.py queue_stats`,
`manage.py purge_queue`), so each broker's quirks are handled once:

- RabbitMQ: a passive queue declare, which answers the ready-message count of an
  existing queue and never creates one. A normal declare would be refused (a quorum
  queue declared without its arguments is "inequivalent"), or, before any worker ran,
  would create a classic queue under the name the workers then fail to declare as a
  quorum queue. No management plugin is needed. A queue that does not exist yet has
  no messages.
- Redis and the file broker: a normal declare. Kombu's Redis transport answers a
  passive declare of an empty queue (no list key) with 404, and declaring creates
  nothing there.

Messages a worker holds (prefetched, running) and RabbitMQ's delayed messages
(countdowns, in its celery_delayed_* queues) are not "waiting" and are not counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from kombu import Connection
from kombu.transport.base import StdChannel as Channel

from config import celery_app
from ops import catalog

# A health check must answer quickly when the broker is gone.
CONNECT_TIMEOUT = 2


def on_queue(conn: Connection, call: Callable[[Channel], int]) -> int:
    """`call(channel)` for one queue on the open connection `conn`; on RabbitMQ a queue that does not exist holds 0.

    On RabbitMQ a failed queue operation closes its channel, so each call gets a
    channel of its own, and NOT_FOUND (no worker has declared the queue yet)
    means nothing waits there.
    """
    if conn.transport.driver_type != "amqp":
        return call(conn.default_channel)
    channel = conn.channel()
    try:
        return call(channel)
    except conn.channel_errors as exc:
        if getattr(exc, "code", None) == 404:  # NOT_FOUND: no worker has declared it yet
            return 0
        raise
    finally:
        with contextlib.suppress(Exception):  # the broker may have closed it already
            channel.close()


def queue_depth(conn: Connection, name: str) -> int:
    """Messages waiting in the queue `name` on the open broker connection `conn`."""
    passive = conn.transport.driver_type == "amqp"  # see the module docstring
    return on_queue(conn, lambda channel: channel.queue_declare(queue=name, passive=passive).message_count)


def queue_depths(names: Iterable[str] | None = None) -> dict[str, int]:
    """Messages waiting in each queue (default: the project's task queues); raises when the broker is unreachable."""
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        return {name: queue_depth(conn, name) for name in (catalog.queue_names() if names is None else names)}
