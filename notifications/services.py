"""Notifications: every email is an outbox row before it is a task.

Transactional emails (order status, password reset, report ready) are sent one by
one by `send_notification` on high_priority. Bulk emails (campaigns, the weekly
digest) are materialised as rows in batches and sent in chunks, many per task
over one SMTP connection, on low_priority. Both claim rows with a conditional
update that takes a lease, share one rate limit, and never send a row twice.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import logging
import secrets
import smtplib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import SafeMIMEMultipart
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.template import Context, Template, TemplateSyntaxError
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from core import dispatch
from notifications import mailer, ratelimit
from notifications.models import Campaign, EmailPreference, Notification
from ops import inserts
from orders.models import Order, OrderLine

logger = logging.getLogger(__name__)

Status = Notification.Status
Kind = Notification.Kind

# Rows per campaign/digest chunk task: one SMTP connection sends them all, and a
# campaign of 10,000 becomes 50 tasks instead of 10,000.
CHUNK_SIZE = 200
# Rows claimed (and tokens taken) at a time inside a chunk; the campaign's status
# is re-read between batches, so a cancel stops a chunk within one batch. Each
# batch costs about 14 statements (status check, claim, record, progress): at 25
# rows that was a third of a chunk's time in the campaign benchmark; at 100 it is
# a tenth, and one batch takes well under a second to send.
BULK_BATCH_SIZE = 100
# Rows written per INSERT when materialising an audience.
MATERIALISE_BATCH_SIZE = 2000
UNSUBSCRIBE_SALT = "notifications.unsubscribe"
# Password reset links are worthless if they arrive late; do not send them after this.
PASSWORD_RESET_EMAIL_LIFETIME = timedelta(hours=1)


class TransientSendError(Exception):
    """The mail server could not be reached or answered 4xx; try again later."""


class CampaignError(Exception):
    """A campaign cannot do what was asked; the message says why."""


class InvalidUnsubscribeLink(Exception):
    """The unsubscribe token was altered or is not one of ours."""


class Outcome(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    SKIPPED = "skipped"  # final already, or another task holds it
    MISSING = "missing"  # no such notification
    THROTTLED = "throttled"  # the rate limit is spent; re-scheduled


# --- creating messages ------------------------------------------------------------


def queue_email(
    *,
    kind: str,
    recipient: str,
    subject: str,
    body_text: str,
    dedup_key: str,
    body_html: str = "",
    user_id: int | None = None,
    headers: dict[str, str] | None = None,
    expires_at: datetime | None = None,
    subject_object: str = "",
) -> Notification:
    """Create an outbox row in the caller's transaction and send it after commit.

    The same dedup_key twice returns the first row and sends nothing new.
    Raises ValidationError for an invalid recipient address.
    """
    recipient = recipient.strip()
    try:
        validate_email(recipient)
    except ValidationError:
        raise ValidationError({"recipient": [f"{recipient!r} is not a valid email address."]}) from None
    fields = {
        "kind": kind, "recipient": recipient, "subject": subject[:255], "body_text": body_text,
        "body_html": body_html, "user_id": user_id, "headers": headers or {}, "expires_at": expires_at,
        "subject_object": subject_object,
    }  # fmt: skip
    notification = Notification(dedup_key=dedup_key, **fields)
    # Insert first and look only on a conflict: a new message (the usual case)
    # is one INSERT ... ON CONFLICT DO NOTHING, without a SELECT or a savepoint.
    if not inserts.insert_unless_exists(notification, "dedup_key"):
        return Notification.objects.get(dedup_key=dedup_key)
    send_later(notification.pk, expires_at, on_commit=True)
    return notification


ORDER_KINDS = {
    Order.Status.COMPLETED: (Kind.ORDER_COMPLETED, "Your order #{id} is on its way"),
    Order.Status.FAILED: (Kind.ORDER_FAILED, "We could not complete your order #{id}"),
    Order.Status.CANCELLED: (Kind.ORDER_CANCELLED, "Your order #{id} is cancelled"),
}


def notify_order_status(
    order_id: int, *, order: Order | None = None, lines: Sequence[OrderLine] | None = None
) -> Notification | None:
    """Tell the customer their order completed, failed or was cancelled (a row in the caller's transaction).

    A caller that holds the order row locked in this transaction, with its lines,
    may pass them (the pipeline does); otherwise they are read here.
    """
    if order is None:
        order = Order.objects.select_related("customer").get(pk=order_id)
    elif order.pk != order_id:
        raise ValueError(f"the order passed is {order.pk}, not {order_id}")
    if order.status not in ORDER_KINDS:
        raise ValueError(f"order {order_id} is {order.status}; only final orders are notified")
    if not order.customer.email:
        logger.warning("order %s: customer %s has no email address, nothing sent", order_id, order.customer_id)
        return None
    kind, subject = ORDER_KINDS[order.status]
    context = {
        "order": order,
        "lines": order.lines.select_related("product") if lines is None else lines,
        "customer": order.customer,
        "order_url": settings.SITE_URL + reverse("orders:detail", args=[order.pk]),
    }
    return queue_email(
        kind=kind,
        recipient=order.customer.email,
        user_id=order.customer_id,
        subject=subject.format(id=order.pk),
        body_text=render_to_string(f"notifications/email/{kind}.txt", context),
        body_html=render_to_string(f"notifications/email/{kind}.html", context),
        # A replayed order may fail or complete again; that is a new message.
        dedup_key=f"order:{order.pk}:{order.status}:{order.replays}",
        subject_object=f"orders.order:{order.pk}",
    )


def notify_report_ready(report_id: int) -> Notification | None:
    """Tell the staff member who asked for a report that it is ready (a row in the caller's transaction)."""
    from reports.models import Report

    report = Report.objects.select_related("requested_by").get(pk=report_id)
    user = report.requested_by
    if user is None or not user.email:
        return None
    context = {
        "report": report, "user": user,
        "report_url": settings.SITE_URL + reverse("reports:detail", args=[report.pk]),
    }  # fmt: skip
    return queue_email(
        kind=Kind.REPORT_READY, recipient=user.email, user_id=user.pk,
        subject=f"Your report is ready: {report}",
        body_text=render_to_string("notifications/email/report_ready.txt", context),
        body_html=render_to_string("notifications/email/report_ready.html", context),
        dedup_key=f"report:{report.pk}:ready:{report.finished_at.isoformat()}",
        subject_object=f"reports.report:{report.pk}",
    )  # fmt: skip


def queue_password_reset(*, recipient: str, user_id: int, subject: str, body_text: str, body_html: str = "") -> None:
    """Password reset emails go through the outbox too; web never talks SMTP."""
    key = hashlib.sha256(f"{user_id}:{body_text}".encode()).hexdigest()[:32]
    queue_email(
        kind=Kind.PASSWORD_RESET, recipient=recipient, user_id=user_id, subject=subject, body_text=body_text,
        body_html=body_html, dedup_key=f"password_reset:{user_id}:{key}",
        expires_at=timezone.now() + PASSWORD_RESET_EMAIL_LIFETIME,
    )  # fmt: skip


def queue_test_email(recipient: str) -> Notification:
    """A test message, to check the mail set-up end to end (manage.py send_test_email)."""
    now = timezone.now()
    return queue_email(
        kind=Kind.TEST, recipient=recipient, subject="Test email from the shop back office",
        body_text=render_to_string("notifications/email/test.txt", {"now": now, "settings": settings}),
        dedup_key=f"test:{recipient}:{now.isoformat()}",
    )  # fmt: skip


# --- sending one -------------------------------------------------------------------


def send_later(
    notification_id: int,
    expires: datetime | None,
    *,
    on_commit: bool = False,
    countdown: float | None = None,
    task_id: str | None = None,
) -> None:
    """Send the send_notification task, after the commit with `on_commit`; a broker outage leaves it to the sweep.

    `expires` is the row's expires_at: time-sensitive messages also expire on the
    broker, so a backlog drops them.
    """
    if on_commit:
        dispatch.send_on_commit(
            "notifications.tasks.send_notification", [notification_id], expires=expires, task_id=task_id
        )
    else:
        dispatch.send(
            "notifications.tasks.send_notification",
            [notification_id],
            expires=expires,
            countdown=countdown,
            task_id=task_id,
        )


def send_notification(notification_id: int, *, task_id: str, last_attempt: bool = False, retry_in: int = 0) -> Outcome:
    """Send one queued email, once. Raises TransientSendError when the caller should retry."""
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        logger.warning("notification %s does not exist (deleted or a bad id): nothing to send", notification_id)
        return Outcome.MISSING
    if notification.status in Notification.FINAL_STATUSES:
        return Outcome.SKIPPED
    if _expire_if_late(notification):
        return Outcome.EXPIRED
    limit = rate_limit()
    if limit is not None:
        grant = ratelimit.take("email", 1, limit)
        if not grant.granted:
            send_later(notification_id, notification.expires_at, countdown=grant.wait)
            return Outcome.THROTTLED
    if not _claim(Notification.objects.filter(pk=notification_id), task_id):
        return Outcome.SKIPPED
    # No re-read after the claim: it changes only status and lease fields, and
    # the message's content (what build_message reads) never changes.
    try:
        mailer.send(build_message(notification))
    except Exception as exc:  # classified just below; anything unknown is a permanent failure
        error = describe_smtp_error(exc)
        if is_transient(exc) and not last_attempt:
            _hold_for_retry([notification.pk], task_id, retry_in, error)
            raise TransientSendError(error) from exc
        _finish([notification.pk], task_id, Status.FAILED, error=error)
        logger.error("notification %s failed (task %s): %s", notification_id, task_id, error)
        return Outcome.FAILED
    _finish([notification.pk], task_id, Status.SENT)
    logger.info("notification %s sent to %s (task %s)", notification_id, notification.recipient, task_id)
    return Outcome.SENT


def rate_limit() -> ratelimit.RateLimit | None:
    return ratelimit.RateLimit(*settings.EMAIL_RATE_LIMIT) if settings.EMAIL_RATE_LIMIT else None


def _claimable(now: datetime, task_id: str = "") -> Q:
    """Rows a task may take: queued and free (or held for this task's own retry), or abandoned mid-send.

    A row being sent is never claimable while its lease is live, not even by the
    same task id: two deliveries of one message running at once must not both
    talk to the mail server. A task that hits a transient error puts its rows
    back to queued, still leased to itself, so its retry takes them back.
    """
    free = Q(lease_owner="") | Q(lease_expires_at__lt=now)
    if task_id:
        free |= Q(lease_owner=task_id)
    return Q(status=Status.QUEUED) & free | Q(status=Status.SENDING, lease_expires_at__lt=now)


def _claim(rows: QuerySet[Notification], task_id: str) -> int:
    now = timezone.now()
    return rows.filter(_claimable(now, task_id)).update(
        status=Status.SENDING, lease_owner=task_id, lease_expires_at=now + settings.NOTIFICATION_LEASE_TIMEOUT,
        attempts=F("attempts") + 1, task_id=task_id, updated_at=now,
    )  # fmt: skip


def _expire_if_late(notification: Notification) -> bool:
    if notification.expires_at is None or notification.expires_at > timezone.now():
        return False
    Notification.objects.filter(_claimable(timezone.now()), pk=notification.pk).update(
        status=Status.EXPIRED, last_error="Expired before it could be sent.", updated_at=timezone.now()
    )
    logger.info("notification %s expired at %s, not sent", notification.pk, notification.expires_at)
    return True


def _finish(ids: list[int], task_id: str, status: str, *, error: str = "") -> None:
    now = timezone.now()
    Notification.objects.filter(pk__in=ids, lease_owner=task_id, status=Status.SENDING).update(
        status=status, sent_at=now if status == Status.SENT else None, last_error=error,
        lease_owner="", lease_expires_at=None, updated_at=now,
    )  # fmt: skip


def _hold_for_retry(ids: list[int], task_id: str, retry_in: int, error: str) -> None:
    """Put the rows back to queued, leased to this task through the retry's countdown, for that retry to take."""
    until = timezone.now() + timedelta(seconds=retry_in) + settings.NOTIFICATION_LEASE_TIMEOUT
    Notification.objects.filter(pk__in=ids, lease_owner=task_id, status=Status.SENDING).update(
        status=Status.QUEUED, last_error=error, lease_expires_at=until, updated_at=timezone.now()
    )
    logger.warning("notifications %s: task %s will retry in %ss: %s", ids, task_id, retry_in, error)


class OutboxEmail(EmailMultiAlternatives):
    """Django's text+HTML email, with its MIME boundary chosen up front instead of by the email package.

    The email package makes a random boundary for each message and compiles a new
    regular expression to scan the text for it: 7% of a campaign chunk's time,
    and every new pattern pushes another out of `re`'s cache. This boundary is
    random too; "=_" never occurs in quoted-printable or base64 text, so only the
    raw bodies are checked, with a substring test, and the package's own way is
    kept in the (astronomically unlikely) case of a hit.
    """

    def message(self) -> SafeMIMEMultipart:
        message = super().message()
        boundary = f"=_{secrets.token_hex(12)}"
        bodies = (self.body, *(content for content, _ in self.alternatives))
        if message.is_multipart() and not any(boundary in str(body) for body in bodies):
            message.set_boundary(boundary)
        return message


def build_message(notification: Notification, connection: BaseEmailBackend | None = None) -> EmailMultiAlternatives:
    domain = settings.DEFAULT_FROM_EMAIL.rsplit("@", 1)[-1].rstrip(">") or "localhost"
    # Stable per row: if a crash makes us send twice, mail systems can tell it is one message.
    headers = {**notification.headers, "Message-ID": f"<notification-{notification.pk}@{domain}>"}
    message = OutboxEmail(
        subject=notification.subject, body=notification.body_text, to=[notification.recipient],
        headers=headers, connection=connection,
    )  # fmt: skip
    if notification.body_html:
        message.attach_alternative(notification.body_html, "text/html")
    return message


def is_transient(exc: BaseException) -> bool:
    """Network trouble and 4xx answers may go away; 5xx answers and anything else will not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError))


def describe_smtp_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{address} refused: {code} {text!r}" for address, (code, text) in exc.recipients.items())
    return f"{type(exc).__name__}: {exc}"


# --- bulk: campaigns and the digest ----------------------------------------------


@dataclass(frozen=True)
class ChunkResult:
    sent: int
    failed: int
    throttled_for: float = 0.0  # > 0: the chunk stopped for the rate limit and was re-scheduled


def deliver_range(
    first_id: int, last_id: int, *, kind: str, task_id: str, campaign_id: int | None = None,
    last_attempt: bool = False, retry_in: int = 0, progress: Callable[[int, int], None] = lambda sent, failed: None,
) -> ChunkResult:  # fmt: skip
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
            batch = _claim_batch(rows, wanted, task_id)
            if not batch:
                break
            batch_sent, batch_failed = _send_batch(connection, batch, task_id, campaign_id, last_attempt, retry_in)
            sent, failed = sent + batch_sent, failed + batch_failed
            progress(sent, failed)
    finally:
        connection.close()
    if campaign_id is not None:
        finish_campaign_if_done(campaign_id)
    return ChunkResult(sent, failed)


def _claim_batch(rows: QuerySet[Notification], size: int, task_id: str) -> list[Notification]:
    with transaction.atomic():
        # SKIP LOCKED: two chunks (or a chunk and the sweep's re-run) never wait on each other's rows.
        ids = list(
            rows.filter(_claimable(timezone.now(), task_id))
            .order_by("pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:size]
        )
        if ids:
            _claim(Notification.objects.filter(pk__in=ids), task_id)
    return list(Notification.objects.filter(pk__in=ids, lease_owner=task_id).order_by("pk"))


def _send_batch(
    connection: BaseEmailBackend, batch: list[Notification], task_id: str, campaign_id: int | None,
    last_attempt: bool, retry_in: int,
) -> tuple[int, int]:  # fmt: skip
    sent_ids: list[int] = []
    failed: dict[int, str] = {}
    now = timezone.now()
    try:
        for position, notification in enumerate(batch):
            if notification.expires_at and notification.expires_at <= now:
                _expire_if_late(notification)
                continue
            try:
                # Open once and keep it open: a backend that is not open yet opens
                # and closes a connection inside every send_messages() call.
                connection.open()
                connection.send_messages([build_message(notification, connection)])
            except Exception as exc:  # classified below
                if is_transient(exc):
                    if last_attempt or notification.attempts >= settings.EMAIL_MAX_RETRIES + 1:
                        failed[notification.pk] = describe_smtp_error(exc)
                        continue
                    # The server went away: keep what went out, hold the rest for the retry.
                    remaining = [n.pk for n in batch[position:] if n.pk not in failed]
                    _hold_for_retry(remaining, task_id, retry_in, describe_smtp_error(exc))
                    raise TransientSendError(describe_smtp_error(exc)) from exc
                failed[notification.pk] = describe_smtp_error(exc)
            else:
                sent_ids.append(notification.pk)
    finally:
        _record_batch(sent_ids, failed, task_id, campaign_id)
    return len(sent_ids), len(failed)


def _record_batch(sent_ids: list[int], failed: dict[int, str], task_id: str, campaign_id: int | None) -> None:
    """Mark rows sent/failed and move the campaign's counts in one transaction, so counts always match rows."""
    with transaction.atomic():
        if sent_ids:
            _finish(sent_ids, task_id, Status.SENT)
        for pk, error in failed.items():
            _finish([pk], task_id, Status.FAILED, error=error)
        if campaign_id is not None and (sent_ids or failed):
            Campaign.objects.filter(pk=campaign_id).update(
                sent=F("sent") + len(sent_ids), failed=F("failed") + len(failed)
            )


def audience(campaign: Campaign) -> QuerySet:
    """Active customers with an email address who have not unsubscribed; for 'ordered since', only recent buyers."""
    users = get_user_model().objects.filter(is_active=True, is_staff=False).exclude(email="")
    users = users.filter(~Exists(EmailPreference.objects.filter(user=OuterRef("pk"), unsubscribed_at__isnull=False)))
    if campaign.audience == Campaign.Audience.ORDERED_SINCE:
        since = datetime.combine(campaign.ordered_since, time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))
        users = users.filter(Exists(Order.objects.filter(customer=OuterRef("pk"), created_at__gte=since)))
    return users


def check_campaign_template(text: str) -> None:
    """Raise ValidationError if the subject or body is not a valid template."""
    try:
        Template(text)
    except TemplateSyntaxError as exc:
        raise ValidationError(f"The text has a template error: {exc}") from None


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
    except Exception as exc:
        Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).update(
            status=Campaign.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
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
    for batch in _batched(users, MATERIALISE_BATCH_SIZE):
        Notification.objects.bulk_create(
            [_campaign_message(campaign, user, subject, body) for user in batch],
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
    ranges = list(_id_ranges(rows))
    if ranges:
        chunks = (dispatch.signature("notifications.tasks.send_campaign_chunk", [campaign_id, *ids]) for ids in ranges)
        dispatch.send_group(chunks, about=f"campaign {campaign_id}'s chunks up to row {ranges[-1][1]}")
    return ranges


def _campaign_message(campaign: Campaign, user: object, subject: Template, body: Template) -> Notification:
    context = Context({"first_name": user.first_name or user.username, "username": user.username, "email": user.email})
    text = body.render(context)
    unsubscribe = unsubscribe_url(user.pk)
    return Notification(
        kind=Kind.CAMPAIGN, campaign=campaign, user_id=user.pk, recipient=user.email,
        subject=subject.render(context)[:255],
        body_text=render_to_string("notifications/email/campaign.txt", {"text": text, "unsubscribe_url": unsubscribe}),
        body_html=render_to_string("notifications/email/campaign.html", {"text": text, "unsubscribe_url": unsubscribe}),
        headers=_marketing_headers(unsubscribe), dedup_key=f"campaign:{campaign.pk}:user:{user.pk}",
    )  # fmt: skip


def _marketing_headers(unsubscribe: str) -> dict[str, str]:
    """The headers for the user's unsubscribe link (signed once per message: a third of a launch's time went on it)."""
    # RFC 8058 one-click: mail clients POST "List-Unsubscribe=One-Click" to the link.
    return {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _id_ranges(rows: QuerySet[Notification], size: int = CHUNK_SIZE) -> Iterator[tuple[int, int]]:
    """Consecutive (first id, last id) ranges of `size` rows each, streamed from the database."""
    for batch in _batched(rows.order_by("pk").values_list("pk", flat=True).iterator(chunk_size=10 * size), size):
        yield batch[0], batch[-1]


def send_campaign_chunk(
    campaign_id: int, first_id: int, last_id: int, *, task_id: str, last_attempt: bool = False, retry_in: int = 0,
    progress: Callable[[dict], None] = lambda meta: None,
) -> ChunkResult:  # fmt: skip
    """Send one chunk of a campaign; re-schedule it when the rate limit is spent."""
    total = Campaign.objects.filter(pk=campaign_id).values_list("total", flat=True).first() or 0

    def report(sent: int, failed: int) -> None:
        progress({"campaign": campaign_id, "chunk_sent": sent, "chunk_failed": failed, "total": total})

    result = deliver_range(
        first_id, last_id, kind=Kind.CAMPAIGN, campaign_id=campaign_id, task_id=task_id,
        last_attempt=last_attempt, retry_in=retry_in, progress=report,
    )  # fmt: skip
    if result.throttled_for:
        dispatch.send(
            "notifications.tasks.send_campaign_chunk", [campaign_id, first_id, last_id], countdown=result.throttled_for
        )
    return result


def send_digest_chunk(
    first_id: int, last_id: int, *, task_id: str, last_attempt: bool = False, retry_in: int = 0
) -> ChunkResult:
    """Send one chunk of digest messages; re-schedule it when the rate limit is spent."""
    result = deliver_range(
        first_id, last_id, kind=Kind.DIGEST, task_id=task_id, last_attempt=last_attempt, retry_in=retry_in
    )
    if result.throttled_for:
        dispatch.send("notifications.tasks.send_digest_chunk", [first_id, last_id], countdown=result.throttled_for)
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


def cancel_campaign(campaign_id: int) -> Campaign:
    """Stop a campaign: its queued rows are cancelled at once; rows being sent right now finish and are counted."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if campaign.status not in (Campaign.Status.DRAFT, Campaign.Status.SENDING):
            raise CampaignError(f"The campaign is already {campaign.get_status_display().lower()}.")
        Notification.objects.filter(campaign=campaign, status=Status.QUEUED).update(
            status=Status.CANCELLED, updated_at=timezone.now()
        )
        campaign.status = Campaign.Status.CANCELLED
        campaign.finished_at = timezone.now()
        campaign.save(update_fields=["status", "finished_at"])
    logger.info("campaign %s cancelled", campaign_id)
    return campaign


def campaign_progress(campaign: Campaign) -> dict[str, object]:
    return {
        "id": campaign.pk, "status": campaign.status, "total": campaign.total, "sent": campaign.sent,
        "failed": campaign.failed, "progress": campaign.progress,
    }  # fmt: skip


def last_iso_week(today: date) -> tuple[date, date]:
    """Monday and Sunday of the ISO week before the one `today` is in."""
    this_monday = today - timedelta(days=today.weekday())
    return this_monday - timedelta(days=7), this_monday - timedelta(days=1)


def send_weekly_digest(*, today: date | None = None) -> int:
    """Queue a digest of last ISO week's orders for each subscribed customer who ordered, then send in chunks.

    Idempotent per customer and week (dedup_key), so running it twice sends nothing new.
    """
    zone = ZoneInfo(settings.TIME_ZONE)
    monday, sunday = last_iso_week(today or timezone.localdate())
    year, week, _ = monday.isocalendar()
    label = f"{year}-W{week:02d}"
    start = datetime.combine(monday, time.min, tzinfo=zone)
    end = start + timedelta(days=7)
    unsubscribed = EmailPreference.objects.filter(user=OuterRef("customer"), unsubscribed_at__isnull=False)
    orders = (
        Order.objects.filter(created_at__gte=start, created_at__lt=end, customer__is_active=True)
        .exclude(customer__email="")
        .filter(~Exists(unsubscribed))
        .select_related("customer")
        .order_by("customer_id", "created_at")
    )
    created_before = Notification.objects.filter(dedup_key__startswith=f"digest:{label}:").count()
    per_customer = (
        (customer, list(customer_orders))
        for customer, customer_orders in itertools.groupby(orders.iterator(chunk_size=2000), key=lambda o: o.customer)
    )
    for batch in _batched(per_customer, 500):
        messages = []
        for customer, customer_orders in batch:
            unsubscribe = unsubscribe_url(customer.pk)
            context = {
                "customer": customer, "orders": customer_orders, "monday": monday, "sunday": sunday,
                "week": label, "unsubscribe_url": unsubscribe, "orders_url": settings.SITE_URL + "/orders/",
            }  # fmt: skip
            messages.append(
                Notification(
                    kind=Kind.DIGEST,
                    user_id=customer.pk,
                    recipient=customer.email,
                    subject=f"Your orders in week {week} ({monday:%d %b} to {sunday:%d %b})",
                    body_text=render_to_string("notifications/email/digest.txt", context),
                    body_html=render_to_string("notifications/email/digest.html", context),
                    headers=_marketing_headers(unsubscribe),
                    dedup_key=f"digest:{label}:user:{customer.pk}",
                )
            )
        Notification.objects.bulk_create(messages, ignore_conflicts=True)
    rows = Notification.objects.filter(dedup_key__startswith=f"digest:{label}:")
    created = rows.count() - created_before
    for first, last in _id_ranges(rows.filter(status=Status.QUEUED)):
        dispatch.send("notifications.tasks.send_digest_chunk", [first, last])
    logger.info("weekly digest %s: %s new messages", label, created)
    return created


# --- customers and staff ---------------------------------------------------------------


def unsubscribe_token(user_id: int) -> str:
    return signing.dumps(user_id, salt=UNSUBSCRIBE_SALT)


def unsubscribe_url(user_id: int) -> str:
    return settings.SITE_URL + reverse("notifications:unsubscribe", args=[unsubscribe_token(user_id)])


def user_for_unsubscribe_token(token: str) -> object:
    try:
        user_id = signing.loads(token, salt=UNSUBSCRIBE_SALT)
        return get_user_model().objects.get(pk=user_id)
    except (signing.BadSignature, get_user_model().DoesNotExist, TypeError, ValueError):
        raise InvalidUnsubscribeLink("This unsubscribe link is not valid.") from None


def set_marketing_subscription(user_id: int, *, subscribed: bool) -> EmailPreference:
    """Opt a customer in or out of campaigns and the digest; order emails are not affected."""
    preference, _ = EmailPreference.objects.update_or_create(
        user_id=user_id, defaults={"unsubscribed_at": None if subscribed else timezone.now()}
    )
    # Marketing messages already queued for them are dropped too.
    if not subscribed:
        Notification.objects.filter(user_id=user_id, kind__in=Notification.BULK_KINDS, status=Status.QUEUED).update(
            status=Status.CANCELLED, last_error="The customer unsubscribed.", updated_at=timezone.now()
        )
    return preference


def resend(notification_id: int, task_id: str | None = None) -> bool:
    """Send a failed email again (staff action). False when it is not failed."""
    with transaction.atomic():
        notification = Notification.objects.select_for_update().filter(pk=notification_id, status=Status.FAILED).first()
        if notification is None:
            return False
        Notification.objects.filter(pk=notification_id).update(
            status=Status.QUEUED, lease_owner="", lease_expires_at=None, updated_at=timezone.now()
        )
        if notification.campaign_id:
            # The row leaves "failed", so the campaign's count does too; a finished campaign sends again.
            Campaign.objects.filter(pk=notification.campaign_id).update(failed=F("failed") - 1)
            Campaign.objects.filter(pk=notification.campaign_id, status=Campaign.Status.DONE).update(
                status=Campaign.Status.SENDING, finished_at=None
            )
        _send_again(notification, task_id)
    return True


def _send_again(notification: Notification, task_id: str | None = None) -> None:
    """Send a row's task again after the commit: bulk rows as a one-row chunk, which stays on low_priority."""
    pk = notification.pk
    if notification.kind == Kind.CAMPAIGN:
        dispatch.send_on_commit(
            "notifications.tasks.send_campaign_chunk", [notification.campaign_id, pk, pk], task_id=task_id
        )
    elif notification.kind == Kind.DIGEST:
        dispatch.send_on_commit("notifications.tasks.send_digest_chunk", [pk, pk], task_id=task_id)
    else:
        send_later(pk, notification.expires_at, on_commit=True, task_id=task_id)


def retry_sending(args: list, kwargs: dict, *, actor_id: int | None, task_id: str) -> None:
    """Retry a send_notification task from its result (ops' "Retry"): resend a failed email, or send a stuck one."""
    notification_id = kwargs.get("notification_id", args[0] if args else None)
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        raise ValueError(f"notification {notification_id} does not exist")
    if notification.status == Status.FAILED:
        resend(notification.pk, task_id=task_id)
    elif Notification.objects.filter(_claimable(timezone.now()), pk=notification.pk).exists():
        send_later(notification.pk, notification.expires_at, on_commit=True, task_id=task_id)
    else:
        raise ValueError(f"notification {notification.pk} is {notification.status}; nothing to retry")


def cancel_queued(notification_id: int) -> bool:
    """Cancel an email that has not gone out yet (staff action). False when it is not queued."""
    return bool(
        Notification.objects.filter(pk=notification_id, status=Status.QUEUED).update(
            status=Status.CANCELLED, last_error="Cancelled by staff.", updated_at=timezone.now()
        )
    )


# --- periodic --------------------------------------------------------------------------

SWEEP_BATCH_SIZE = 1000
CLEANUP_BATCH_SIZE = 5000


def requeue_stale_notifications() -> int:
    """Re-send rows that were queued but never picked up (e.g. the broker was down), or whose lease expired.

    Also re-sends the launch of campaigns that were started but never launched.
    Returns how many rows and campaigns it re-sent.
    """
    now = timezone.now()
    relaunched = _relaunch_stalled_campaigns(now)
    # Late rows are expired here: their task would be dropped by the broker (Celery expires) unrun.
    expired = Notification.objects.filter(_claimable(now), expires_at__lte=now).update(
        status=Status.EXPIRED, last_error="Expired before it could be sent.", updated_at=now
    )
    if expired:
        logger.info("stale sweep expired %s late notifications", expired)
    cutoff = now - settings.NOTIFICATION_REQUEUE_AFTER
    stale = _claimable(now) & Q(created_at__lt=cutoff) & (Q(requeued_at__isnull=True) | Q(requeued_at__lt=cutoff))
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
        for batch in _batched((row["pk"] for row in group_rows), CHUNK_SIZE):
            if kind == Kind.CAMPAIGN:
                dispatch.send("notifications.tasks.send_campaign_chunk", [campaign_id, batch[0], batch[-1]])
            else:
                dispatch.send("notifications.tasks.send_digest_chunk", [batch[0], batch[-1]])
    logger.info("stale sweep re-sent %s notifications", len(rows))
    return relaunched + len(rows)


def _relaunch_stalled_campaigns(now: datetime) -> int:
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


def cleanup_notifications() -> int:
    """Delete sent and expired rows older than NOTIFICATION_RETENTION, in batches."""
    cutoff = timezone.now() - settings.NOTIFICATION_RETENTION
    old = Notification.objects.filter(
        Q(status=Status.SENT, sent_at__lt=cutoff) | Q(status=Status.EXPIRED, updated_at__lt=cutoff)
    )
    deleted = 0
    while ids := list(old.values_list("pk", flat=True)[:CLEANUP_BATCH_SIZE]):
        deleted += Notification.objects.filter(pk__in=ids).delete()[0]
    logger.info("cleanup deleted %s old notifications", deleted)
    return deleted
