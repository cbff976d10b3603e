"""Send tasks by name, after the transaction commits, with one broker-outage policy.

Services never import tasks modules: tasks import services, so imports run one
way. A service names the task it wants ("orders.tasks.process_order") with plain
JSON arguments, and this module looks the task up in Celery's registry and
sends it. A test checks that every name sent anywhere is a registered task
routed to a declared queue.

The broker-outage policy lives here and only here. Work that must not be lost
is a database row before it is a message (an order, an outbox email, a report,
a campaign); the message only wakes a worker. When the broker cannot take a
message, sending logs a warning and returns False: the row stays as it is, and
the periodic sweep of that kind of work sends it again. Nothing is raised into
a web request, or after a transaction that already committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from amqp.exceptions import AMQPError, MessageNacked
from celery import Task, chord, group
from celery.canvas import Signature
from django.db import transaction
from kombu.exceptions import OperationalError

from config import celery_app

logger = logging.getLogger(__name__)

# What publishing raises when the broker is down, unreachable or refuses the message.
# Celery wraps the transports' recoverable errors (a lost connection, RabbitMQ's
# nack of a publish under publisher confirms) in Kombu's OperationalError once its
# retries are spent; a refused or reset socket can surface as OSError. RabbitMQ's
# other refusals come as they are: a channel error (NOT_FOUND for an exchange that
# is not there, ACCESS_REFUSED, PRECONDITION_FAILED) or a connection error (AMQPError),
# and a nack outside Celery's publish as MessageNacked.
BROKER_REFUSALS = (OperationalError, AMQPError, MessageNacked)
BROKER_ERRORS = (*BROKER_REFUSALS, OSError)


def task(name: str) -> Task:
    """The registered task called `name`; LookupError (a programming error) for a name that is not one."""
    if name not in celery_app.tasks:
        # Web and command processes import tasks modules only when asked to; the
        # first send by name in a process imports them all (autodiscovery).
        celery_app.loader.import_default_modules()
    try:
        return celery_app.tasks[name]
    except KeyError:
        raise LookupError(f"{name!r} is not a registered task") from None


def send(
    name: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    task_id: str | None = None,
    countdown: float | None = None,
    expires: datetime | float | None = None,
) -> bool:
    """Send task `name` now. False, with a warning logged, when the broker cannot take it."""
    try:
        task(name).apply_async(args, kwargs, task_id=task_id, countdown=countdown, expires=expires)
    except BROKER_ERRORS as exc:
        logger.warning("broker unavailable, %s%s not sent; its sweep sends it later: %s", name, list(args), _why(exc))
        return False
    return True


def send_on_commit(name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> None:
    """Send task `name` once the current transaction commits (at once outside one); never raises into the caller."""
    task(name)  # an unknown name fails here, in the caller, not after its commit
    transaction.on_commit(partial(send, name, args, kwargs, **options), robust=True)


def signature(
    name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *, immutable: bool = False
) -> Signature:
    """A signature of task `name`, for a group, a chord or a link; an immutable one ignores its parent's result."""
    return task(name).signature(args, kwargs, immutable=immutable)


def send_signature(signature: Signature, args: Sequence[Any] = (), *, about: str) -> bool:
    """Send one signature (with its links), `args` before its own; False, logged, when the broker cannot take it."""
    return _send_canvas(signature, about, args)


def revoke(task_ids: Sequence[str], *, about: str) -> bool:
    """Ask every worker never to start these tasks (they keep revoked ids in CELERY_WORKER_STATE_DB across restarts).

    False, logged, when the broker cannot take the broadcast: the work's own rows
    must stop it anyway (a revoke is a shortcut, never the only guard).
    """
    if not task_ids:
        return True
    try:
        celery_app.control.revoke(list(task_ids))
    except BROKER_ERRORS as exc:
        logger.warning("broker unavailable, %s not revoked: %s", about, _why(exc))
        return False
    return True


def send_group(signatures: Iterable[Signature], *, about: str) -> bool:
    """Send the signatures as one group; False, logged, when the broker cannot take it."""
    return _send_canvas(group(signatures), about)


def send_chord(header: Iterable[Signature], body: Signature, *, about: str) -> str | None:
    """Send a chord: `body` runs with the header's results once all of them finished.

    Returns the id of the header's group (its chord counter), with which the
    sender can call the chord off later (forget_chord); None when the broker is down.
    """
    canvas = chord(list(header), body)
    canvas.freeze()  # fixes the ids now, so that the group id is known before sending
    group_id = canvas.tasks.options["task_id"]
    return group_id if _send_canvas(canvas, about) else None


def forget_chord(group_id: str) -> None:
    """Call off a chord's body: its counter goes, so the header's remaining parts neither count nor trigger it.

    For work cancelled on purpose: its revoked parts would otherwise end the chord
    in a ChordError, a failure of the body that nobody should have to replay.
    """
    from django_celery_results.models import ChordCounter

    ChordCounter.objects.filter(group_id=group_id).delete()


def _send_canvas(canvas: Signature, about: str, args: Sequence[Any] = ()) -> bool:
    try:
        canvas.apply_async(tuple(args))
    except BROKER_ERRORS as exc:
        logger.warning("broker unavailable, %s not sent; its sweep sends it later: %s", about, _why(exc))
        return False
    return True


def _why(exc: BaseException) -> str:
    """The error and what caused it: Celery's OperationalError after a nack says nothing by itself ('')."""
    cause = exc.__cause__
    return f"{exc!r}" + (f" from {cause!r}" if cause is not None else "")
