"""Celery entry points for notifications; each calls one service.

Routes (config/settings.py): send_notification and the stale sweep on
high_priority; campaigns, the digest and cleanup on low_priority.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from core.base_task import ProjectTask
from notifications.services import bulk, campaigns, digest, outbox, sweeps

EMAIL_RETRY_POLICY = {
    "max_retries": settings.EMAIL_MAX_RETRIES,
    "retry_backoff": settings.EMAIL_RETRY_BACKOFF,
    "retry_backoff_max": settings.TASK_RETRY_BACKOFF_MAX,
    "retry_jitter": True,
}


@shared_task(
    bind=True,
    name="notifications.tasks.send_notification",
    soft_time_limit=60,
    time_limit=90,
    subject=("notifications.Notification", "notification_id"),
    retry_with="notifications.services.outbox.retry_sending",
    **EMAIL_RETRY_POLICY,
)
def send_notification(self: ProjectTask, notification_id: int) -> str:
    """Send one queued email once; retry SMTP and connection errors with backoff.

    An email that failed for good ends the task in FAILURE (EmailFailed).
    """
    outcome = self.call_service(outbox.send_notification, notification_id)
    if outcome is outbox.Outcome.FAILED:
        raise outbox.EmailFailed.of(notification_id)
    return outcome.value


@shared_task(
    bind=True,
    name="notifications.tasks.launch_campaign",
    soft_time_limit=600,
    time_limit=660,
    subject=("notifications.Campaign", "campaign_id"),
    cancel_with="notifications.services.campaigns.cancel_campaign",
)
def launch_campaign(self: ProjectTask, campaign_id: int) -> int:
    """Write the campaign's outbox rows and fan out its chunks as a group."""
    return campaigns.launch_campaign(campaign_id, task_id=self.request.id)


@shared_task(
    bind=True,
    name="notifications.tasks.send_campaign_chunk",
    soft_time_limit=240,
    time_limit=300,
    subject=("notifications.Campaign", "campaign_id"),
    cancel_with="notifications.services.campaigns.cancel_campaign",
    **EMAIL_RETRY_POLICY,
)
def send_campaign_chunk(self: ProjectTask, campaign_id: int, first_id: int, last_id: int) -> dict:
    """Send one chunk of a campaign over one SMTP connection, reporting progress."""
    result = self.call_service(
        campaigns.send_campaign_chunk,
        campaign_id,
        first_id,
        last_id,
        progress=lambda meta: self.update_state(state="PROGRESS", meta=meta),
    )
    return {
        "sent": result.sent,
        "failed": result.failed,
        "throttled_for": result.throttled_for,
        "stopped_at_soft_limit": result.stopped,
    }


@shared_task(name="notifications.tasks.send_weekly_digest", soft_time_limit=600, time_limit=660)
def send_weekly_digest() -> int:
    """Queue last ISO week's order digest for every subscribed customer who ordered, and send it in chunks."""
    return digest.send_weekly_digest()


@shared_task(
    bind=True,
    name="notifications.tasks.send_digest_chunk",
    soft_time_limit=240,
    time_limit=300,
    **EMAIL_RETRY_POLICY,
)
def send_digest_chunk(self: ProjectTask, first_id: int, last_id: int) -> dict:
    """Send one chunk of digest messages over one SMTP connection."""
    result = self.call_service(bulk.send_digest_chunk, first_id, last_id)
    return {
        "sent": result.sent,
        "failed": result.failed,
        "throttled_for": result.throttled_for,
        "stopped_at_soft_limit": result.stopped,
    }


@shared_task(name="notifications.tasks.requeue_stale_notifications", soft_time_limit=50, time_limit=60)
def requeue_stale_notifications() -> int:
    """Re-send queued emails that were never picked up, and ones whose lease expired."""
    return sweeps.requeue_stale_notifications()


@shared_task(name="notifications.tasks.cleanup_notifications", soft_time_limit=600, time_limit=660)
def cleanup_notifications() -> int:
    """Delete sent and expired emails older than NOTIFICATION_RETENTION."""
    return sweeps.cleanup_notifications()
