"""Campaigns: staff write one, start it, follow its progress and cancel it; the launch writes a row per recipient."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.template import Context, Template, TemplateSyntaxError
from django.template.loader import render_to_string
from django.utils import timezone

from core import dispatch
from core.base_task import Attempt
from core.dates import start_of_day
from core.errors import Refused
from core.interruptions import SoftTimeLimitExceeded
from notifications.models import Campaign, EmailPreference, Notification
from notifications.services.bulk import CHUNK_SIZE, ChunkResult, batched, deliver_range, id_ranges
from notifications.services.preferences import marketing_headers, unsubscribe_url
from orders.services import history

logger = logging.getLogger(__name__)

Status = Notification.Status
Kind = Notification.Kind


# Rows written per INSERT when materialising an audience: one chunk's worth, so the
# first chunk goes out as soon as its rows are written. At 2,000 a campaign of 1,000
# had all its rows written (a quarter of its time, py-spy: half rendering, a third
# the INSERT) while the other worker process waited for a chunk.
MATERIALISE_BATCH_SIZE = CHUNK_SIZE

# The last_error of the rows a failed launch cancelled: resume_campaign queues exactly these again.
LAUNCH_FAILED_NOTE = "Cancelled because the campaign's launch failed; resuming the campaign sends it."


class CampaignError(Refused):
    """A campaign cannot do what was asked; the message says why."""


def audience(campaign: Campaign) -> QuerySet:
    """Active customers with an email address who have not unsubscribed; for 'ordered since', only recent buyers."""
    users = get_user_model().objects.filter(is_active=True, is_staff=False).exclude(email="")
    users = users.filter(~Exists(EmailPreference.objects.filter(user=OuterRef("pk"), unsubscribed_at__isnull=False)))
    if campaign.audience == Campaign.Audience.ORDERED_SINCE:
        users = users.filter(pk__in=history.customers_who_ordered_since(start_of_day(campaign.ordered_since)))
    return users


# A customer as the templates see one, to render a campaign once before it is saved.
SAMPLE_CUSTOMER = {"first_name": "Ada", "username": "ada", "email": "ada@example.com"}


def check_campaign_template(text: str) -> None:
    """Raise ValidationError if the subject or body does not compile, or compiles but cannot render.

    Some errors show only when rendering ({% include %} of a template that does not
    exist, {% url %} of an unknown name): they are found here, when staff save, not
    for every recipient at launch.
    """
    try:
        Template(text).render(Context(SAMPLE_CUSTOMER))
    except TemplateSyntaxError as exc:
        raise ValidationError(f"The text has a template error: {exc}") from None
    except Exception as exc:  # any rendering error: the template tags raise many kinds
        raise ValidationError(f"The text cannot be rendered: {type(exc).__name__}: {exc}") from None


def start_campaign(campaign_id: int, *, actor_id: int | None = None) -> Campaign:
    """Start sending a draft campaign: the audience must not be empty. The rows are made by launch_campaign."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status != Campaign.Status.DRAFT:
            raise CampaignError(
                f"Only a draft campaign can be started; this one is {campaign.get_status_display().lower()}."
            )
        if campaign.audience == Campaign.Audience.ORDERED_SINCE and campaign.ordered_since is None:
            raise CampaignError("Choose the date for the 'ordered since' audience.")
        check_campaign_template(campaign.subject)
        check_campaign_template(campaign.body)
        total = audience(campaign).count()
        if total == 0:
            raise CampaignError("The audience is empty: nobody would receive this campaign.")
        campaign.status = Campaign.Status.SENDING
        campaign.total = total
        campaign.started_at = timezone.now()
        campaign.save(update_fields=["status", "total", "started_at"])
        dispatch.send_on_commit("notifications.tasks.launch_campaign", [campaign.pk])
    logger.info("campaign %s started by user %s for %s recipients", campaign_id, actor_id, total)
    return campaign


def launch_campaign(campaign_id: int, *, task_id: str) -> int:
    """Write one outbox row per recipient (in batches, streaming the audience), then fan out the chunk tasks.

    If writing the rows fails, the campaign is marked failed with the error (its
    rows so far stay, and a re-run skips them), so staff see it instead of a
    campaign that sends forever.
    """
    campaign = Campaign.objects.get(pk=campaign_id)
    if campaign.status != Campaign.Status.SENDING:
        logger.info("campaign %s is %s; not launching", campaign_id, campaign.status)
        return 0
    if campaign.launched_at is not None:  # a second launch message (redelivered, or sent by the sweep)
        logger.info("campaign %s was launched at %s; not launching again", campaign_id, campaign.launched_at)
        return 0
    Campaign.objects.filter(pk=campaign_id).update(task_id=task_id)
    try:
        return _launch(campaign)
    except SoftTimeLimitExceeded:
        # Not a failure: the rows written so far stay (and their chunks are out),
        # and a new launch writes the rest, skipping what exists.
        relaunch = str(uuid.uuid4())
        if dispatch.send("notifications.tasks.launch_campaign", [campaign_id], task_id=relaunch):
            Campaign.objects.filter(pk=campaign_id, task_id=task_id).update(task_id=relaunch)
        else:  # the stale sweep re-sends the launch of a campaign with no launch task
            Campaign.objects.filter(pk=campaign_id, task_id=task_id).update(task_id="")
        logger.warning("campaign %s: launch task %s stopped at its soft time limit; re-sent", campaign_id, task_id)
        return 0
    except Exception as exc:
        with transaction.atomic():
            failed = Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).update(
                status=Campaign.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
            )
            if failed:
                # Chunks already out stop at the campaign's status; without this
                # their rows stayed queued and the stale sweep re-sent them for ever.
                cancel_rows_of_failed(campaign_id)
        raise


def _launch(campaign: Campaign) -> int:
    """Write the rows batch by batch, sending each batch's chunks as soon as it is written.

    Streaming the fan-out lets the other worker processes send while the rest of
    the audience is still being written, instead of waiting for all of it.
    """
    campaign_id = campaign.pk
    subject, body = Template(campaign.subject), Template(campaign.body)
    users = (
        audience(campaign)
        .only("pk", "email", "username", "first_name")
        .order_by("pk")
        .iterator(chunk_size=MATERIALISE_BATCH_SIZE)
    )
    rows = Notification.objects.filter(campaign=campaign)
    chunks, fanned_out_to = 0, 0  # chunks are out for this campaign's queued rows with ids up to fanned_out_to
    for batch in batched(users, MATERIALISE_BATCH_SIZE):
        Notification.objects.bulk_create(
            [campaign_message(campaign, user, subject, body) for user in batch],
            ignore_conflicts=True,  # a re-run of launch writes nothing twice
        )
        # Checked after the rows are committed: a cancel that came first is seen
        # here, and one that comes later cancels these rows with the rest.
        if not Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).exists():
            rows.filter(status=Status.QUEUED).update(status=Status.CANCELLED, updated_at=timezone.now())
            logger.info("campaign %s stopped while launching: it is no longer sending", campaign_id)
            return chunks
        ranges = _fan_out(campaign_id, rows.filter(status=Status.QUEUED, pk__gt=fanned_out_to))
        if ranges:
            chunks, fanned_out_to = chunks + len(ranges), ranges[-1][1]
    Campaign.objects.filter(pk=campaign_id).update(total=rows.count(), launched_at=timezone.now())
    logger.info("campaign %s launched: %s chunks", campaign_id, chunks)
    finish_campaign_if_done(campaign_id)
    return chunks


def _fan_out(campaign_id: int, rows: QuerySet[Notification]) -> list[tuple[int, int]]:
    """Send one group of chunk tasks covering `rows`; returns the chunks' (first id, last id) ranges."""
    ranges = list(id_ranges(rows))
    if ranges:
        chunks = (dispatch.signature("notifications.tasks.send_campaign_chunk", [campaign_id, *ids]) for ids in ranges)
        dispatch.send_group(chunks, about=f"campaign {campaign_id}'s chunks up to row {ranges[-1][1]}")
    return ranges


def campaign_message(campaign: Campaign, user: object, subject: Template, body: Template) -> Notification:
    context = Context({"first_name": user.first_name or user.username, "username": user.username, "email": user.email})
    text = body.render(context)
    unsubscribe = unsubscribe_url(user.pk)
    return Notification(
        kind=Kind.CAMPAIGN,
        campaign=campaign,
        user_id=user.pk,
        recipient=user.email,
        subject=subject.render(context)[:255],
        body_text=render_to_string("notifications/email/campaign.txt", {"text": text, "unsubscribe_url": unsubscribe}),
        body_html=render_to_string("notifications/email/campaign.html", {"text": text, "unsubscribe_url": unsubscribe}),
        headers=marketing_headers(unsubscribe),
        dedup_key=f"campaign:{campaign.pk}:user:{user.pk}",
    )


def send_campaign_chunk(
    campaign_id: int,
    first_id: int,
    last_id: int,
    *,
    attempt: Attempt,
    progress: Callable[[dict], None] = lambda meta: None,
) -> ChunkResult:
    """Send one chunk of a campaign; re-schedule it when the rate limit is spent."""
    total = Campaign.objects.filter(pk=campaign_id).values_list("total", flat=True).first() or 0

    def report(sent: int, failed: int) -> None:
        progress({"campaign": campaign_id, "chunk_sent": sent, "chunk_failed": failed, "total": total})

    result = deliver_range(
        first_id, last_id, kind=Kind.CAMPAIGN, attempt=attempt, campaign_id=campaign_id, progress=report
    )
    if result.unfinished:  # the rest of the chunk goes to a new task (a broker outage leaves it to the sweep)
        dispatch.send(
            "notifications.tasks.send_campaign_chunk", [campaign_id, first_id, last_id], countdown=result.throttled_for
        )
    else:
        finish_campaign_if_done(campaign_id)
    return result


def finish_campaign_if_done(campaign_id: int) -> bool:
    """Mark a sending campaign done once it is launched and none of its rows is queued or being sent."""
    unfinished = Notification.objects.filter(campaign_id=campaign_id, status__in=[Status.QUEUED, Status.SENDING])
    done = (
        Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING, launched_at__isnull=False)
        .exclude(Exists(unfinished))
        .update(status=Campaign.Status.DONE, finished_at=timezone.now())
    )
    if done:
        logger.info("campaign %s done", campaign_id)
    return bool(done)


def cancel_rows_of_failed(campaign_id: int) -> int:
    """Cancel the queued rows of a failed campaign, marked so that resume_campaign can queue them again."""
    return Notification.objects.filter(campaign_id=campaign_id, status=Status.QUEUED).update(
        status=Status.CANCELLED,
        last_error=LAUNCH_FAILED_NOTE,
        lease_owner="",
        lease_expires_at=None,
        updated_at=timezone.now(),
    )


def cancel_rows_of_stopped_campaigns() -> int:
    """Cancel rows left queued by campaigns that failed or were cancelled (the stale sweep's guard); how many."""
    cancelled = 0
    stopped = Campaign.objects.filter(status__in=[Campaign.Status.FAILED, Campaign.Status.CANCELLED])
    left = Notification.objects.filter(status=Status.QUEUED, kind=Kind.CAMPAIGN, campaign__in=stopped)
    for campaign_id, status in stopped.filter(Exists(left.filter(campaign=OuterRef("pk")))).values_list("pk", "status"):
        with transaction.atomic():
            if status == Campaign.Status.FAILED:
                cancelled += cancel_rows_of_failed(campaign_id)
            else:
                cancelled += Notification.objects.filter(campaign_id=campaign_id, status=Status.QUEUED).update(
                    status=Status.CANCELLED, updated_at=timezone.now()
                )
    if cancelled:
        logger.warning("stale sweep cancelled %s rows of campaigns that are no longer sending", cancelled)
    return cancelled


def resume_campaign(campaign_id: int, *, actor_id: int | None = None) -> Campaign:
    """Send a failed campaign again: the rows its failure cancelled are queued again and a new launch writes the rest.

    Rows already sent or failed stay as they are, and so do their counts.
    """
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status != Campaign.Status.FAILED:
            raise CampaignError(
                f"Only a failed campaign can be resumed; this one is {campaign.get_status_display().lower()}."
            )
        requeued = Notification.objects.filter(
            campaign=campaign, status=Status.CANCELLED, last_error=LAUNCH_FAILED_NOTE
        ).update(status=Status.QUEUED, last_error="", requeued_at=None, updated_at=timezone.now())
        campaign.status = Campaign.Status.SENDING
        campaign.error = ""
        campaign.finished_at = campaign.launched_at = None
        campaign.task_id = ""  # no launch under way: the stale sweep re-sends one if this one is lost
        campaign.save(update_fields=["status", "error", "finished_at", "launched_at", "task_id"])
        dispatch.send_on_commit("notifications.tasks.launch_campaign", [campaign.pk])
    logger.info("campaign %s resumed by user %s; %s rows queued again", campaign_id, actor_id, requeued)
    return campaign


def cancel_campaign(campaign_id: int, *, actor_id: int | None = None) -> Campaign:
    """Stop a campaign: its queued rows are cancelled at once; rows being sent right now finish and are counted.

    A failed campaign can be cancelled too, to say it will not be resumed.
    """
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status not in (Campaign.Status.DRAFT, Campaign.Status.SENDING, Campaign.Status.FAILED):
            raise CampaignError(f"The campaign is already {campaign.get_status_display().lower()}.")
        Notification.objects.filter(campaign=campaign, status=Status.QUEUED).update(
            status=Status.CANCELLED, updated_at=timezone.now()
        )
        campaign.status = Campaign.Status.CANCELLED
        campaign.finished_at = timezone.now()
        campaign.save(update_fields=["status", "finished_at"])
    logger.info("campaign %s cancelled by user %s", campaign_id, actor_id)
    return campaign


def campaign_progress(campaign: Campaign) -> dict[str, object]:
    return {
        "id": campaign.pk,
        "status": campaign.status,
        "total": campaign.total,
        "sent": campaign.sent,
        "failed": campaign.failed,
        "progress": campaign.progress,
    }


def relaunch_stalled(now: datetime) -> int:
    """Send launch_campaign again for campaigns started but never launched (the broker was down at the start).

    Stalled means: sending, no launch has begun (a launch records its task id
    first thing), and started longer than NOTIFICATION_REQUEUE_AFTER ago. The new
    task's id is recorded once it is sent, so later sweeps leave the campaign to
    it. Should the first message turn up after all, the two launches write no row
    twice (ignore_conflicts), chunks claim their rows, and whichever starts after
    the other finished stops at launched_at.
    """
    stalled = Campaign.objects.filter(
        status=Campaign.Status.SENDING,
        launched_at__isnull=True,
        task_id="",
        started_at__lt=now - settings.NOTIFICATION_REQUEUE_AFTER,
    )
    relaunched = 0
    for campaign_id in stalled.values_list("pk", flat=True):
        task_id = str(uuid.uuid4())
        if not dispatch.send("notifications.tasks.launch_campaign", [campaign_id], task_id=task_id):
            continue  # the broker is still down; the next sweep tries again
        Campaign.objects.filter(pk=campaign_id, task_id="").update(task_id=task_id)
        logger.warning("stale sweep re-sent the launch of campaign %s (task %s)", campaign_id, task_id)
        relaunched += 1
    return relaunched
