"""The periodic sweeps: re-send what was never picked up, expire what is late, delete what is old."""

from __future__ import annotations

import itertools
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from core import dispatch
from notifications.models import Notification
from notifications.services import campaigns
from notifications.services.bulk import CHUNK_SIZE, batched
from notifications.services.outbox import claimable, final, send_later

logger = logging.getLogger(__name__)

Status = Notification.Status
Kind = Notification.Kind


SWEEP_BATCH_SIZE = 1000

CLEANUP_BATCH_SIZE = 5000


def requeue_stale_notifications() -> int:
    """Re-send rows that were queued but never picked up (e.g. the broker was down), or whose lease expired.

    Also re-sends the launch of campaigns that were started but never launched.
    Returns how many rows and campaigns it re-sent.
    """
    now = timezone.now()
    relaunched = campaigns.relaunch_stalled(now)
    # Rows of a campaign that stopped sending are never sent: cancelled here, not re-sent every time.
    campaigns.cancel_rows_of_stopped_campaigns()
    # Late rows are expired here: their task would be dropped by the broker (Celery expires) unrun.
    expired = Notification.objects.filter(claimable(now), expires_at__lte=now).update(
        **final(Status.EXPIRED, last_error="Expired before it could be sent.", updated_at=now)
    )
    if expired:
        logger.info("stale sweep expired %s late notifications", expired)
    cutoff = now - settings.NOTIFICATION_REQUEUE_AFTER
    stale = claimable(now) & Q(created_at__lt=cutoff) & (Q(requeued_at__isnull=True) | Q(requeued_at__lt=cutoff))
    rows = list(
        Notification.objects.filter(stale)
        .order_by("pk")
        .values("pk", "kind", "campaign_id", "expires_at")[:SWEEP_BATCH_SIZE]
    )
    if not rows:
        return relaunched
    Notification.objects.filter(pk__in=[row["pk"] for row in rows]).update(requeued_at=now)
    for row in rows:
        if row["kind"] not in Notification.BULK_KINDS:
            send_later(row["pk"], row["expires_at"])
    bulk = sorted(
        (row for row in rows if row["kind"] in Notification.BULK_KINDS), key=lambda r: (r["campaign_id"] or 0, r["pk"])
    )
    for (campaign_id, kind), group_rows in itertools.groupby(bulk, key=lambda r: (r["campaign_id"], r["kind"])):
        for batch in batched((row["pk"] for row in group_rows), CHUNK_SIZE):
            if kind == Kind.CAMPAIGN:
                dispatch.send("notifications.tasks.send_campaign_chunk", [campaign_id, batch[0], batch[-1]])
            else:
                dispatch.send("notifications.tasks.send_digest_chunk", [batch[0], batch[-1]])
    logger.info("stale sweep re-sent %s notifications", len(rows))
    return relaunched + len(rows)


def cleanup_notifications() -> int:
    """Delete sent and expired rows older than NOTIFICATION_RETENTION, and rows whose credential expired, in batches."""
    now = timezone.now()
    cutoff = now - settings.NOTIFICATION_RETENTION
    old = Notification.objects.filter(
        Q(status=Status.SENT, sent_at__lt=cutoff)
        | Q(status=Status.EXPIRED, updated_at__lt=cutoff)
        # Whatever its status: a reset link's row goes when the link stops working.
        | Q(credential_expires_at__lt=now)
    )
    deleted = 0
    while ids := list(old.values_list("pk", flat=True)[:CLEANUP_BATCH_SIZE]):
        deleted += Notification.objects.filter(pk__in=ids).delete()[0]
    logger.info("cleanup deleted %s old notifications", deleted)
    return deleted
