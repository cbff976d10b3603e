"""Bulk email: many outbox rows per task, over one SMTP connection, within the shared rate limit."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from core import dispatch
from core.base_task import Attempt
from notifications import ratelimit
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
    caller re-schedules the chunk for `throttled_for` seconds later) or the
    campaign was cancelled. Raises TransientSendError when the server is unreachable.
    """
    rows = Notification.objects.filter(pk__gte=first_id, pk__lte=last_id, kind=kind)
    if campaign_id is not None:
        rows = rows.filter(campaign_id=campaign_id)
    limit = rate_limit()
    sent = failed = 0
    connection = get_connection()
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
                    return ChunkResult(sent, failed, throttled_for=grant.wait)
                wanted = grant.granted
            batch = _claim_batch(rows, wanted, attempt.task_id)
            if not batch:
                break
            batch_sent, batch_failed = _send_batch(connection, batch, attempt, campaign_id)
            sent, failed = sent + batch_sent, failed + batch_failed
            progress(sent, failed)
    finally:
        connection.close()
    return ChunkResult(sent, failed)


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


def _send_batch(
    connection: BaseEmailBackend, batch: list[Notification], attempt: Attempt, campaign_id: int | None
) -> tuple[int, int]:
    sent_ids: list[int] = []
    failed: dict[int, str] = {}
    now = timezone.now()
    try:
        for position, notification in enumerate(batch):
            if notification.expires_at and notification.expires_at <= now:
                expire_if_late(notification)
                continue
            try:
                # Open once and keep it open: a backend that is not open yet opens
                # and closes a connection inside every send_messages() call.
                connection.open()
                connection.send_messages([build_message(notification, connection)])
            except Exception as exc:  # classified below
                if is_transient(exc):
                    if attempt.is_last or notification.attempts >= settings.EMAIL_MAX_RETRIES + 1:
                        failed[notification.pk] = describe_smtp_error(exc)
                        continue
                    # The server went away: keep what went out, hold the rest for the retry.
                    remaining = [n.pk for n in batch[position:] if n.pk not in failed]
                    hold_for_retry(remaining, attempt.task_id, attempt.retry_in, describe_smtp_error(exc))
                    raise TransientSendError(describe_smtp_error(exc)) from exc
                failed[notification.pk] = describe_smtp_error(exc)
            else:
                sent_ids.append(notification.pk)
    finally:
        _record_batch(sent_ids, failed, attempt.task_id, campaign_id)
    return len(sent_ids), len(failed)


def _record_batch(sent_ids: list[int], failed: dict[int, str], task_id: str, campaign_id: int | None) -> None:
    """Mark rows sent/failed and move the campaign's counts in one transaction, so counts always match rows."""
    with transaction.atomic():
        if sent_ids:
            finish(sent_ids, task_id, Status.SENT)
        for pk, error in failed.items():
            finish([pk], task_id, Status.FAILED, error=error)
        if campaign_id is not None and (sent_ids or failed):
            Campaign.objects.filter(pk=campaign_id).update(
                sent=F("sent") + len(sent_ids), failed=F("failed") + len(failed)
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
    if result.throttled_for:
        dispatch.send("notifications.tasks.send_digest_chunk", [first_id, last_id], countdown=result.throttled_for)
    return result
