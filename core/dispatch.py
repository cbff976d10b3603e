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
a web request, or after a transaction that already committed. A prefork child's
sends on commit learn of a refusal by RabbitMQ only when their task has ended
(settle_confirms): the same warning then names them, and the same sweeps apply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import partial
from typing import Any

import redis
from amqp.exceptions import AMQPError, MessageNacked
from celery import Task, chord, group
from celery.canvas import Signature
from django.db import transaction
from kombu.exceptions import OperationalError
from redis.exceptions import MasterDownError, NoPermissionError

from config import celery_app
from core import confirms, delayed_delivery

logger = logging.getLogger(__name__)

# What publishing raises when the broker is down, unreachable or refuses the message.
# Celery wraps the transports' recoverable errors (a lost connection, RabbitMQ's
# nack of a publish under publisher confirms) in Kombu's OperationalError once its
# retries are spent; a refused or reset socket can surface as OSError. RabbitMQ's
# other refusals come as they are: a channel error (NOT_FOUND for an exchange that
# is not there, ACCESS_REFUSED, PRECONDITION_FAILED) or a connection error (AMQPError),
# and a nack outside Celery's publish as MessageNacked. Redis's error replies, as
# Kombu wraps them or as redis-py raises them, count only when broker_refused() says so.
BROKER_REFUSALS = (OperationalError, AMQPError, MessageNacked, redis.ResponseError)
BROKER_ERRORS = (*BROKER_REFUSALS, OSError)

# Redis answers a command it will not run with an error reply, and Kombu wraps every
# such reply in OperationalError, as it does a lost connection. Only the replies that
# say the server refuses writes for now count as the broker unavailable: each ends
# without a change to the code, and the sweeps make good what it refused. OOM: used
# memory reached maxmemory under `noeviction` (the policy compose runs, so that a full
# Redis refuses messages rather than evicting queued ones) until workers drain the
# queues. READONLY: a replica, until a failover ends. MASTERDOWN: a replica cut off
# from its master. MISCONF: a failed snapshot or AOF write. NOREPLICAS: fewer replicas
# than min-replicas-to-write. NOPERM: an ACL denies the write (RabbitMQ's ACCESS_REFUSED
# counts too). BUSY: a Lua script has run past busy-reply-threshold, until it ends or
# is killed. Any other reply (WRONGTYPE at a queue's key, a wrong argument) comes from
# a bug, and stays one: raised, an error in the log and a 500, never a warning and a
# 503 that would hide it while every sweep fails the same way.
REDIS_REFUSALS = (redis.OutOfMemoryError, redis.ReadOnlyError, MasterDownError, NoPermissionError)
# redis-py has no class for these; in a pipeline it puts "Command # 1 (...) of pipeline caused error: " first.
REDIS_REFUSAL_CODES = re.compile(r"(?:^|caused error: )(?:MISCONF|NOREPLICAS|BUSY) ")


def broker_refused(exc: BaseException) -> bool:
    """True when `exc`, one of BROKER_REFUSALS, says the broker is away or refuses the message (not a Redis bug)."""
    if not isinstance(exc, BROKER_REFUSALS):
        return False
    reply = exc if isinstance(exc, redis.ResponseError) else exc.__cause__
    if isinstance(reply, redis.ResponseError):
        return isinstance(reply, REDIS_REFUSALS) or bool(REDIS_REFUSAL_CODES.search(str(reply)))
    return True


def broker_unavailable(exc: BaseException) -> bool:
    """True for what publishing raises when the broker cannot take a message: the senders log it and go on."""
    return isinstance(exc, OSError) or broker_refused(exc)


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
    confirm_later: bool = False,
) -> bool:
    """Send task `name` now. False, with a warning logged, when the broker cannot take it.

    With `confirm_later`, while a prefork child runs a task (confirm_at_end), the
    publisher confirm is waited for when the task has ended (settle_confirms), not here.
    """
    settlement = _settlement.get() if confirm_later else None
    options = {"task_id": task_id, "countdown": countdown, "expires": expires}
    try:
        if settlement is None:
            task(name).apply_async(args, kwargs, **options)
        else:
            settlement.send(task(name), args, kwargs, about=f"{name}{list(args)}", **options)
    except BROKER_ERRORS as exc:
        if not broker_unavailable(exc):
            raise
        logger.warning("broker unavailable, %s%s not sent; its sweep sends it later: %s", name, list(args), _why(exc))
        if countdown:
            delayed_delivery.declare_again()  # the broker may have lost RabbitMQ's delay exchanges
        return False
    return True


def send_on_commit(name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> None:
    """Send task `name` once the current transaction commits (at once outside one); never raises into the caller.

    Nothing waits for what it returns, so in a prefork child its publisher confirm
    is waited for at the end of the task (settle_confirms).
    """
    task(name)  # an unknown name fails here, in the caller, not after its commit
    transaction.on_commit(partial(send, name, args, kwargs, confirm_later=True, **options), robust=True)


class _Settlement:
    """The publishes of one task run whose confirms wait for its end: the producer they went through, and what."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.nested = 0  # tasks run eagerly inside this one: theirs are settled with this task's
        # Each channel published on, with what went through it: a publish that lost its
        # connection and went again through a new one leaves the old channel here, whose
        # wait then fails, so that nothing published on it goes unmentioned.
        self.sent: dict[Any, list[str]] = {}

    def send(self, task: Task, args: Sequence[Any], kwargs: dict[str, Any] | None, about: str, **options: Any) -> None:
        if self.producer is None:
            # Held until the task ends: no other thread of a threads worker may use its channel meanwhile.
            self.producer = celery_app.producer_pool.acquire(block=True)
        with confirms.later():
            task.apply_async(args, kwargs, producer=self.producer, **options)
        self.sent.setdefault(self.producer.channel, []).append(about)

    def settle(self) -> bool:
        settled = True
        try:
            for channel, sent in self.sent.items():
                wait = getattr(channel, "wait_for_confirms", None)  # only RabbitMQ's channel leaves confirms for later
                if wait is None:
                    continue
                try:
                    wait()
                except BROKER_ERRORS as exc:
                    if not broker_unavailable(exc):
                        raise
                    settled = False
                    logger.warning(
                        "broker unavailable, no confirm for %s; the sweeps send again what was lost: %s",
                        ", ".join(sent),
                        _why(exc),
                    )
        finally:
            if self.producer is not None:
                self.producer.release()
        return settled


_settlement: ContextVar[_Settlement | None] = ContextVar("dispatch_settlement", default=None)


def confirm_at_end() -> None:
    """From now until settle_confirms(), sends made on commit leave their publisher confirm for later.

    A prefork child calls it as each task starts (ops.worker): the wait for RabbitMQ to
    confirm the next piece of work's message then overlaps the storing of the
    task's own result, instead of coming before it (core.confirms).
    """
    settlement = _settlement.get()
    if settlement is None:
        _settlement.set(_Settlement())
    else:
        settlement.nested += 1


def settle_confirms() -> bool:
    """Wait for the confirms left for later since confirm_at_end(); False, logged, when some never came.

    A worker calls it when the task has ended, its result stored, before the task's
    own message is acknowledged. What RabbitMQ refused, or did not confirm before
    the connection was lost, is what a broker outage leaves: the rows stay, their
    sweeps send them again, and a lost connection leaves the task unacknowledged too.
    """
    settlement = _settlement.get()
    if settlement is None:
        return True
    if settlement.nested:
        settlement.nested -= 1
        return True
    _settlement.set(None)
    return settlement.settle()


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
        if not broker_unavailable(exc):
            raise
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
        if not broker_unavailable(exc):
            raise
        logger.warning("broker unavailable, %s not sent; its sweep sends it later: %s", about, _why(exc))
        return False
    return True


def _why(exc: BaseException) -> str:
    """The error and what caused it: Celery's OperationalError after a nack says nothing by itself ('')."""
    cause = exc.__cause__
    return f"{exc!r}" + (f" from {cause!r}" if cause is not None else "")
