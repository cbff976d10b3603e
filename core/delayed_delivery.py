"""RabbitMQ's native delayed delivery, set up by whichever process sends the first countdown, not only by workers.

On quorum queues Celery publishes a task with a countdown or an ETA to the
exchange celery_delayed_27, from which 28 delay queues (one per bit of the delay
in seconds) route it back to its queue once due. Celery declares that topology,
and binds the task queues to it, in the worker's DelayedDelivery bootstep only.
So on a vhost where no worker ever started (a new deployment, web and beat up
first) the publish failed with NOT_FOUND "no exchange 'celery_delayed_27'".

Here, before the first delayed publish of each process, the publishing process
declares the same topology (Kombu's functions the worker uses) and the task
queues themselves (as quorum queues, with the arguments the workers declare, so
that they can be bound). Every declaration is idempotent and durable: the
topology stays on the broker, and a worker starting later declares the same.

A process declares once, so a broker that lost the topology after that (a node
reset, a vhost recreated) refuses this process's next countdown with NOT_FOUND.
dispatch.send then calls declare_again(): that countdown follows the outage
policy (its sweep sends the work), and the next one declares the topology first.
Workers need none of this: they declare it again whenever they reconnect. As a
worker starts, though, the task queues are declared here first
(declare_as_a_worker_starts), for Celery's set-up binds queues nobody declared yet.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from kombu import Connection
from kombu.transport.native_delayed_delivery import (
    MAX_LEVEL,
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

logger = logging.getLogger(__name__)

# Where Celery publishes every countdown and ETA on quorum queues (celery/app/base.py send_task).
DELAY_EXCHANGE = level_name(MAX_LEVEL)

_lock = threading.Lock()
_declared = False  # the topology is declared on this process's broker (it is durable: once is enough)


def declare(conn: Connection) -> None:
    """Declare the delay exchanges and queues and the task queues, and bind the task queues (the worker's set-up)."""
    from config import celery_app

    declare_native_delayed_delivery_exchanges_and_queues(
        conn, celery_app.conf.broker_native_delayed_delivery_queue_type
    )
    for queue in celery_app.amqp.queues.values():
        queue.bind(conn.default_channel).declare()  # it must exist to be bound; the worker declares it the same
        bind_queue_to_native_delayed_delivery_exchange(conn, queue)


@signals.before_task_publish.connect(dispatch_uid="core.delayed_delivery.declare_before_the_first_countdown")
def declare_before_the_first_countdown(exchange: Any = None, **_: Any) -> None:
    """Before the first message of this process that goes to the delay exchange, declare the topology.

    A broker error here is logged and left to the publish that follows, which
    meets the same broker (and the senders' outage policy); the next countdown tries again.
    """
    global _declared
    if _declared or getattr(exchange, "name", exchange) != DELAY_EXCHANGE:
        return
    with _lock:
        if not _declared:
            _declared = _declare_on_the_broker("RabbitMQ's delayed delivery before a countdown")


@signals.worker_init.connect(dispatch_uid="core.delayed_delivery.declare_as_a_worker_starts")
def declare_as_a_worker_starts(**_: Any) -> None:
    """Declare every task queue, and bind it, before the worker's own delayed-delivery set-up does.

    Celery's DelayedDelivery bootstep binds every configured queue, declared or
    not: a worker that takes one queue (compose runs one per queue), started first
    on a new vhost, failed on the queues nobody had declared yet and logged
    "Failed to setup delayed delivery for all broker URLs" (CRITICAL). Declared
    here first, they exist when it binds them. A broker error is logged and left
    to the worker, which connects and retries on its own.
    """
    from django.conf import settings

    if settings.BROKER_IS_RABBITMQ:
        _declare_on_the_broker("the task queues as the worker starts")


def _declare_on_the_broker(what: str) -> bool:
    """declare() on this process's broker; False, with a warning naming `what`, when the broker cannot."""
    from config import celery_app
    from core.dispatch import BROKER_ERRORS

    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            declare(conn)
    except BROKER_ERRORS as exc:
        logger.warning("could not declare %s: %r", what, exc)
        return False
    return True


def declare_again() -> None:
    """Declare the topology again before this process's next countdown: a delayed publish was refused."""
    global _declared
    with _lock:
        _declared = False
