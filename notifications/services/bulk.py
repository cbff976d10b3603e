"""Bulk email: many outbox rows per task, over one SMTP connection, within the shared rate limit."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db import DatabaseError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from core import dispatch
from core.base_task import Attempt
from core.db import commits_not_waiting_for_disk
from core.interruptions import SoftTimeLimitExceeded, uninterrupted
from notifications import ratelimit, sql
from notifications.models import Campaign, Notification
from notifications.services.messages import build_message, describe_smtp_error, is_transient
from notifications.services.outbox import (
    TransientSendError,
    claim,
    claimable,
    expire_if_late,
    final,
    hold_for_retry,
    rate_limit,
    release,
)

logger = logging.getLogger(__name__)

Status = Notification.Status
Kind = Notification.Kind


# Rows per campaign/digest chunk task: one SMTP connection sends them all, and a
# campaign of 10,000 becomes 50 tasks instead of 10,000.
CHUNK_SIZE = 200

# Rows claimed (and tokens taken) at a time inside a chunk; the campaign's status
# is re-read between batches, so a cancel stops a chunk within one batch. Each
# batch costs about 14 statements (status check, claim, record, progress), about
# a tenth of a chunk's time at 100 rows, and one batch takes well under a second.
BULK_BATCH_SIZE = 100

# The emails the server took are recorded together, in one statement: after a send,
# when RECORD_EVERY of them wait or RECORD_WITHIN seconds have passed since the last
# record, and always before the chunk ends, stops or fails. A record per email cost
# about 0.7 ms of a chunk's 2.7 ms per email (py-spy on the bench's campaign).
# The price: a worker killed outright (SIGKILL, the hard time limit, the OOM killer)
# loses the record of at most RECORD_EVERY - 1 emails, all sent within RECORD_WITHIN
# of that last record, and the sweep sends those again. When one send takes
# RECORD_WITHIN or longer (a slow server), each email is recorded before the next starts.
RECORD_EVERY = 20
RECORD_WITHIN = 0.1


@dataclass(frozen=True)
class ChunkResult:
    sent: int
    failed: int
    throttled_for: float = 0.0  # > 0: the chunk stopped for the rate limit and was re-scheduled
    stopped: bool = False  # the soft time limit came: what was sent is recorded, the rest is queued again

    @property
    def unfinished(self) -> bool:
        """The chunk has rows left that the caller sends again as a new task."""
        return self.stopped or self.throttled_for > 0


def deliver_range(
    first_id: int,
    last_id: int,
    *,
    kind: str,
    attempt: Attempt,
    campaign_id: int | None = None,
    progress: Callable[[int, int], None] = lambda sent, failed: None,
) -> ChunkResult:
    """Send the queued bulk rows with ids in [first_id, last_id] over one SMTP connection, in batches.

    Returns when the range is done, or early when the rate limit is spent (the
    caller re-schedules the chunk for `throttled_for` seconds later), at the soft
    time limit (`stopped`: the caller sends the chunk again at once) or when the
    campaign was cancelled. Raises TransientSendError when the server is unreachable.

    Sent emails are recorded a few at a time (RECORD_EVERY, RECORD_WITHIN), and
    always before this returns or raises: a soft time limit, or a termination (Celery's,
    when the broker connection drops), waits for the email in flight
    (core.interruptions), then what went out is recorded and the rest given back; after
    a termination the process leaves (SystemExit) and the chunk's message is delivered again.
    """
    rows = Notification.objects.filter(pk__gte=first_id, pk__lte=last_id, kind=kind)
    if campaign_id is not None:
        rows = rows.filter(campaign_id=campaign_id)
    limit = rate_limit()
    done = _Recorder(attempt.task_id, campaign_id)
    connection = get_connection()
    # The records commit without waiting for the disk (core.db): a worker that dies after a
    # commit cannot lose it, only a crash of PostgreSQL within a fraction of a second can,
    # and then those emails are sent again: the risk every email runs until it is recorded.
    with commits_not_waiting_for_disk():
        try:
            while True:
                if (
                    campaign_id is not None
                    and not Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).exists()
                ):
                    break  # cancelled (its queued rows were cancelled with it) or finished
                wanted = BULK_BATCH_SIZE
                if limit is not None:
                    grant = ratelimit.take("email", wanted, limit, reserve=limit.bulk_reserve)
                    if not grant.granted:
                        return ChunkResult(done.sent, done.failed, throttled_for=grant.wait)
                    wanted = grant.granted
                batch = _claim_batch(rows, wanted, attempt.task_id)
                if not batch:
                    break
                _send_batch(connection, batch, attempt, done)
                progress(done.sent, done.failed)
        except (SoftTimeLimitExceeded, SystemExit) as stop:
            done.record()  # first: the rows it records are still claimed, and the claimed ones go back below
            claimed = rows.filter(lease_owner=attempt.task_id).values_list("pk", flat=True)
            released = release(list(claimed), attempt.task_id)
            logger.warning(
                "chunk %s-%s (task %s) stopped %s after %s sent; %s claimed rows queued again",
                first_id,
                last_id,
                attempt.task_id,
                "at its soft time limit" if isinstance(stop, SoftTimeLimitExceeded) else "by a termination",
                done.sent,
                released,
            )
            if isinstance(stop, SystemExit):
                raise  # the process is leaving; the redelivered message takes the released rows
            return ChunkResult(done.sent, done.failed, stopped=True)
        finally:
            connection.close()
            done.record_on_the_way_out()
        return ChunkResult(done.sent, done.failed)


def _claim_batch(rows: QuerySet[Notification], size: int, task_id: str) -> list[Notification]:
    with transaction.atomic():
        # SKIP LOCKED: two chunks (or a chunk and the sweep's re-run) never wait on each other's rows.
        ids = list(
            rows.filter(claimable(timezone.now(), task_id))
            .order_by("pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:size]
        )
        if ids:
            claim(Notification.objects.filter(pk__in=ids), task_id)
    return list(Notification.objects.filter(pk__in=ids, lease_owner=task_id).order_by("pk"))


class _Recorder:
    """The emails a chunk sent and has not recorded yet, and its counts of what it has recorded so far."""

    def __init__(self, task_id: str, campaign_id: int | None) -> None:
        self.task_id, self.campaign_id = task_id, campaign_id
        self.sent = self.failed = 0
        self.waiting: list[tuple[int, str, datetime]] = []  # (row id, error or "", when it was sent)
        self.recorded_at = time.monotonic()

    def sent_one(self, pk: int, *, error: str = "") -> None:
        """Note one email the server took (or refused for good); record the waiting ones when it is time."""
        self.waiting.append((pk, error, timezone.now()))
        if len(self.waiting) >= RECORD_EVERY or time.monotonic() - self.recorded_at >= RECORD_WITHIN:
            self.record()

    def record(self) -> None:
        if self.waiting:
            _record(self.waiting, self.task_id, self.campaign_id)
            failed = sum(1 for _, error, _ in self.waiting if error)
            self.sent, self.failed = self.sent + len(self.waiting) - failed, self.failed + failed
            self.waiting = []
        self.recorded_at = time.monotonic()

    def record_on_the_way_out(self) -> None:
        """Record what still waits as the chunk ends for any reason; a failure here is logged, not raised over another."""
        if not self.waiting:
            return
        try:
            with uninterrupted():
                self.record()
        except DatabaseError:
            logger.exception(
                "task %s could not record %s emails it sent; their lease expires and the sweep sends them again",
                self.task_id,
                len(self.waiting),
            )


def _send_batch(connection: BaseEmailBackend, batch: list[Notification], attempt: Attempt, done: _Recorder) -> None:
    now = timezone.now()
    for position, notification in enumerate(batch):
        if notification.expires_at and notification.expires_at <= now:
            expire_if_late(notification)
            continue
        # The send and its note are one step for the soft time limit and for a
        # termination: either lands after the note, never between (and never in
        # the SMTP error handling).
        with uninterrupted():
            try:
                # Open once and keep it open: a backend that is not open yet opens
                # and closes a connection inside every send_messages() call.
                connection.open()
                connection.send_messages([build_message(notification, connection)])
            except Exception as exc:  # classified below
                error = describe_smtp_error(exc)
                if is_transient(exc) and not (
                    attempt.is_last or notification.attempts >= settings.EMAIL_MAX_RETRIES + 1
                ):
                    # The server went away: what went out is recorded, hold the rest for the retry.
                    done.record()
                    hold_for_retry([n.pk for n in batch[position:]], attempt.task_id, attempt.retry_in, error)
                    raise TransientSendError(error) from exc
                done.sent_one(notification.pk, error=error)
            else:
                done.sent_one(notification.pk)
    done.record()


def _record(outcomes: list[tuple[int, str, datetime]], task_id: str, campaign_id: int | None) -> None:
    """Mark rows sent (or failed, with their error) and move their campaign's counts by the same rows.

    Only rows still sending under this task's lease change, and the counts move
    by exactly those, so counts match rows. On PostgreSQL it is one round trip
    (notifications.sql.RECORD_BULK_EMAILS); elsewhere one transaction.
    """
    now = timezone.now()
    if sql.in_one_statement():
        with transaction.get_connection().cursor() as cursor:
            cursor.execute(
                sql.RECORD_BULK_EMAILS,
                {
                    "ids": [pk for pk, _, _ in outcomes],
                    "statuses": [Status.FAILED if error else Status.SENT for _, error, _ in outcomes],
                    "sent_at": [None if error else at for _, error, at in outcomes],
                    "errors": [error for _, error, _ in outcomes],
                    "now": now,
                    "task_id": task_id,
                },
            )
        return
    with transaction.atomic():
        ids = [pk for pk, _, _ in outcomes]
        mine = set(
            Notification.objects.filter(pk__in=ids, lease_owner=task_id, status=Status.SENDING).values_list(
                "pk", flat=True
            )
        )
        for pk, error, at in outcomes:
            if pk in mine:
                Notification.objects.filter(pk=pk).update(
                    **final(
                        Status.FAILED if error else Status.SENT,
                        sent_at=None if error else at,
                        last_error=error,
                        lease_owner="",
                        lease_expires_at=None,
                        updated_at=now,
                    )
                )
        failed = sum(1 for pk, error, _ in outcomes if pk in mine and error)
        if campaign_id is not None and mine:
            Campaign.objects.filter(pk=campaign_id).update(
                sent=F("sent") + len(mine) - failed, failed=F("failed") + failed
            )


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def id_ranges(rows: QuerySet[Notification], size: int = CHUNK_SIZE) -> Iterator[tuple[int, int]]:
    """Consecutive (first id, last id) ranges of `size` rows each, streamed from the database."""
    for batch in batched(rows.order_by("pk").values_list("pk", flat=True).iterator(chunk_size=10 * size), size):
        yield batch[0], batch[-1]


def send_digest_chunk(first_id: int, last_id: int, *, attempt: Attempt) -> ChunkResult:
    """Send one chunk of digest messages; re-schedule it when the rate limit is spent."""
    result = deliver_range(first_id, last_id, kind=Kind.DIGEST, attempt=attempt)
    if result.unfinished:
        dispatch.send("notifications.tasks.send_digest_chunk", [first_id, last_id], countdown=result.throttled_for)
    return result
