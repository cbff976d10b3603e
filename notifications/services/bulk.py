"""Bulk email: many outbox rows per task, over one SMTP connection, within the shared rate limit."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db import DatabaseError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from core import dispatch
from core.base_task import Attempt
from core.time_limits import SoftTimeLimitExceeded, soft_limit_deferred
from notifications import ratelimit, sql
from notifications.models import Campaign, Notification
from notifications.services.messages import build_message, describe_smtp_error, is_transient
from notifications.services.outbox import (
    TransientSendError,
    claim,
    claimable,
    expire_if_late,
    finish,
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

    Each email is recorded as soon as the server took it, so a worker killed
    mid-chunk leaves only the email in flight to the sweep, and the soft time
    limit waits for that record (core.time_limits).
    """
    rows = Notification.objects.filter(pk__gte=first_id, pk__lte=last_id, kind=kind)
    if campaign_id is not None:
        rows = rows.filter(campaign_id=campaign_id)
    limit = rate_limit()
    done = _Counts()
    connection = get_connection()
    try:
        _commit_without_waiting_for_the_disk(True)
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
            _send_batch(connection, batch, attempt, campaign_id, done)
            progress(done.sent, done.failed)
    except SoftTimeLimitExceeded:
        claimed = rows.filter(lease_owner=attempt.task_id).values_list("pk", flat=True)
        released = release(list(claimed), attempt.task_id)
        logger.warning(
            "chunk %s-%s (task %s) stopped at its soft time limit after %s sent; %s claimed rows queued again",
            first_id,
            last_id,
            attempt.task_id,
            done.sent,
            released,
        )
        return ChunkResult(done.sent, done.failed, stopped=True)
    finally:
        connection.close()
        _commit_without_waiting_for_the_disk(False)
    return ChunkResult(done.sent, done.failed)


def _commit_without_waiting_for_the_disk(on: bool) -> None:
    """synchronous_commit off for this chunk's session (PostgreSQL), and back to the server's setting after.

    Each email's record is a commit of its own; waiting for the disk at each
    tripled a chunk's database time. A worker that dies after a commit cannot
    lose it (the server has it); only a database crash within a fraction of a
    second can, and then the email is sent again: the risk every email ran
    before it was recorded one by one.
    """
    if not sql.in_one_statement():
        return
    try:
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF" if on else "RESET synchronous_commit")
    except DatabaseError:
        if on:
            raise
        logger.warning("could not reset synchronous_commit; the connection is discarded after the task")


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


class _Counts:
    """What a chunk has recorded so far; still right when a soft time limit stops it mid-batch."""

    def __init__(self) -> None:
        self.sent = self.failed = 0


def _send_batch(
    connection: BaseEmailBackend, batch: list[Notification], attempt: Attempt, campaign_id: int | None, counts: _Counts
) -> None:
    now = timezone.now()
    for position, notification in enumerate(batch):
        if notification.expires_at and notification.expires_at <= now:
            expire_if_late(notification)
            continue
        # The send and its record are one step for the soft time limit: it lands
        # after the record, never between (and never in the SMTP error handling).
        with soft_limit_deferred():
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
                    hold_for_retry([n.pk for n in batch[position:]], attempt.task_id, attempt.retry_in, error)
                    raise TransientSendError(error) from exc
                _record(notification.pk, attempt.task_id, campaign_id, error=error)
                counts.failed += 1
            else:
                _record(notification.pk, attempt.task_id, campaign_id)
                counts.sent += 1


def _record(pk: int, task_id: str, campaign_id: int | None, *, error: str = "") -> None:
    """Mark one row sent (or failed) and move its campaign's count by the same row, so counts match rows.

    One statement per email, right after the server took it: a batch recorded
    at its end lost the record of every email sent before a crash in it, and
    the sweep sent them again. On PostgreSQL it is one round trip
    (notifications.sql.RECORD_BULK_EMAIL); elsewhere a transaction of two UPDATEs.
    """
    status = Status.FAILED if error else Status.SENT
    if sql.in_one_statement():
        now = timezone.now()
        with transaction.get_connection().cursor() as cursor:
            cursor.execute(
                sql.RECORD_BULK_EMAIL,
                {
                    "status": status,
                    "sent_at": None if error else now,
                    "error": error,
                    "now": now,
                    "notification_id": pk,
                    "task_id": task_id,
                    "sent": 0 if error else 1,
                    "failed": 1 if error else 0,
                },
            )
        return
    with transaction.atomic():
        if Notification.objects.filter(pk=pk, lease_owner=task_id, status=Status.SENDING).exists():
            finish([pk], task_id, status, error=error)
            if campaign_id is not None:
                counted = {"failed": F("failed") + 1} if error else {"sent": F("sent") + 1}
                Campaign.objects.filter(pk=campaign_id).update(**counted)


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
