"""The outbox: every email is a row before it is a task; queue one, send it once, resend or cancel it."""

from __future__ import annotations

import enum
import hashlib
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Case, F, Q, QuerySet, TextField, Value, When
from django.template.loader import render_to_string
from django.utils import timezone

from core import dispatch
from core.base_task import Attempt
from core.db import commits_not_waiting_for_disk, fetch_rows, insert_unless_exists, instance_from_row
from core.errors import PermanentFailure, Refused, TransientError
from core.interruptions import SoftTimeLimitExceeded, uninterrupted
from notifications import mailer, ratelimit, sql
from notifications.models import Campaign, Notification
from notifications.services.messages import build_message, describe_smtp_error, is_transient

logger = logging.getLogger(__name__)

Status = Notification.Status
# Other apps name the kind of the emails they queue through here.
Kind = Notification.Kind


# Password reset links are worthless if they arrive late; do not send them after this.
PASSWORD_RESET_EMAIL_LIFETIME = timedelta(hours=1)
# The recipient column's length (RFC 5321 allows 254 in a path).
RECIPIENT_MAX_LENGTH = Notification._meta.get_field("recipient").max_length


class TransientSendError(TransientError):
    """The mail server could not be reached or answered 4xx; try again later."""


class EmailFailed(PermanentFailure):
    """The email failed for good; the task ends in FAILURE with the reason the row keeps."""

    @classmethod
    def of(cls, notification_id: int) -> EmailFailed:
        error = Notification.objects.filter(pk=notification_id).values_list("last_error", flat=True).first()
        return cls(error or f"email {notification_id} failed")


class Outcome(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"  # the task raises EmailFailed for it
    EXPIRED = "expired"
    SKIPPED = "skipped"  # final already, or another task holds it
    MISSING = "missing"  # no such notification
    THROTTLED = "throttled"  # the rate limit is spent; re-scheduled
    STOPPED = "stopped"  # the soft time limit came before the send; re-sent as a new task


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
    credential_expires_at: datetime | None = None,
) -> Notification:
    """Create an outbox row in the caller's transaction and send it after commit.

    The same dedup_key twice returns the first row and sends nothing new.
    Raises ValidationError for an invalid recipient address. A kind that carries
    a credential (Notification.CREDENTIAL_KINDS) must say when it expires.
    """
    recipient = recipient.strip()
    try:
        if len(recipient) > RECIPIENT_MAX_LENGTH:
            raise ValidationError("too long")
        validate_email(recipient)
    except ValidationError:
        raise ValidationError(
            {
                "recipient": [
                    f"{recipient[:80]!r} is not a valid email address of at most {RECIPIENT_MAX_LENGTH} characters."
                ]
            }
        ) from None
    if kind in Notification.CREDENTIAL_KINDS and credential_expires_at is None:
        raise ValueError(f"a {kind} email carries a credential: give its credential_expires_at")
    fields = {
        "kind": kind,
        "recipient": recipient,
        "subject": subject[:255],
        "body_text": body_text,
        "body_html": body_html,
        "user_id": user_id,
        "headers": headers or {},
        "expires_at": expires_at,
        "subject_object": subject_object,
        "credential_expires_at": credential_expires_at,
    }
    notification = Notification(dedup_key=dedup_key, **fields)
    # Insert first and look only on a conflict: a new message (the usual case)
    # is one INSERT ... ON CONFLICT DO NOTHING, without a SELECT or a savepoint.
    if not insert_unless_exists(notification):
        # Asked again (a task delivered again, say): the first publish may have been lost.
        publish_if_waiting(dedup_key)
        return Notification.objects.get(dedup_key=dedup_key)
    send_later(notification.pk, expires_at, on_commit=True)
    return notification


def publish_if_waiting(dedup_key: str) -> bool:
    """Send the row's task again (after commit) if the row is queued and no task holds it; True if it was.

    The row's first publish, made after its commit, may never have reached the
    broker: the broker was down then, or the process was terminated between the
    two. Without this the row waits for the stale sweep (NOTIFICATION_REQUEUE_AFTER).
    A second message for a row whose first is still on its way costs one skipped
    task: a task sends only a row it claims.
    """
    # Claimable and queued: no task holds it, not even for a retry of its own.
    waiting = Notification.objects.filter(claimable(timezone.now()), dedup_key=dedup_key, status=Status.QUEUED)
    row = waiting.values("pk", "expires_at").first()
    if row is None:
        return False
    logger.info("notification %s still queued and untaken: its task is sent again", row["pk"])
    send_later(row["pk"], row["expires_at"], on_commit=True)
    return True


def queue_password_reset(*, recipient: str, user_id: int, subject: str, body_text: str, body_html: str = "") -> None:
    """Password reset emails go through the outbox too; web never talks SMTP."""
    key = hashlib.sha256(f"{user_id}:{body_text}".encode()).hexdigest()[:32]
    queue_email(
        kind=Kind.PASSWORD_RESET,
        recipient=recipient,
        user_id=user_id,
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        dedup_key=f"password_reset:{user_id}:{key}",
        expires_at=timezone.now() + PASSWORD_RESET_EMAIL_LIFETIME,
        credential_expires_at=credential_expiry(),
    )


def credential_expiry() -> datetime:
    """When a reset or confirmation link made now stops working (Django's PASSWORD_RESET_TIMEOUT)."""
    return timezone.now() + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)


def final(status: str, **fields: object) -> dict[str, object]:
    """The UPDATE fields that make rows final with `status`: the body of a credential-carrying row is removed.

    One statement either way (a CASE on the kind), so order emails pay nothing for it.
    """
    credential = Q(kind__in=Notification.CREDENTIAL_KINDS)
    return {
        "status": status,
        "body_text": Case(
            When(credential, then=Value(Notification.REDACTED_BODY)), default=F("body_text"), output_field=TextField()
        ),
        "body_html": Case(When(credential, then=Value("")), default=F("body_html"), output_field=TextField()),
        **fields,
    }


def queue_test_email(recipient: str) -> Notification:
    """A test message, to check the mail set-up end to end (manage.py send_test_email)."""
    now = timezone.now()
    return queue_email(
        kind=Kind.TEST,
        recipient=recipient,
        subject="Test email from the shop back office",
        body_text=render_to_string("notifications/email/test.txt", {"now": now, "settings": settings}),
        dedup_key=f"test:{recipient}:{now.isoformat()}",
    )


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


def send_notification(notification_id: int, *, attempt: Attempt) -> Outcome:
    """Send one queued email, once. Raises TransientSendError when the caller should retry.

    At the soft time limit it stops cleanly: an email that went out is recorded
    as sent (core.interruptions holds the limit off through the send and its
    record), and one that did not is put back and sent again by a new task. A
    termination (Celery's, when the broker connection drops) is held off the same
    way, from the claim to the record: the redelivered message then finds the
    row either still queued and sends it, or sent and skips it.
    """
    try:
        return _send_notification(notification_id, attempt)
    except SoftTimeLimitExceeded:
        return _stop_at_soft_limit(notification_id, attempt.task_id)


def _stop_at_soft_limit(notification_id: int, task_id: str) -> Outcome:
    release([notification_id], task_id)
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        return Outcome.MISSING
    if notification.status in (Status.SENT, Status.FAILED, Status.EXPIRED):
        logger.info(
            "notification %s: soft time limit after it was %s (task %s)", notification_id, notification.status, task_id
        )
        return Outcome(notification.status)
    if notification.status == Status.QUEUED:
        send_later(notification_id, notification.expires_at)
    logger.warning("notification %s: task %s stopped at its soft time limit; re-sent", notification_id, task_id)
    return Outcome.STOPPED


def _send_notification(notification_id: int, attempt: Attempt) -> Outcome:
    task_id = attempt.task_id
    if sql.in_one_statement() and rate_limit() is None:
        # The usual case in one statement: claimed and read at once (notifications.sql).
        # Nothing claimed: the path below finds out why.
        with uninterrupted():
            notification = _claim_in_one_statement(notification_id, task_id)
            if notification is not None:
                return _send_claimed(notification, attempt)
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        logger.warning("notification %s does not exist (deleted or a bad id): nothing to send", notification_id)
        return Outcome.MISSING
    if notification.status in Notification.FINAL_STATUSES:
        return Outcome.SKIPPED
    if expire_if_late(notification):
        return Outcome.EXPIRED
    limit = rate_limit()
    if limit is not None:
        reserve = limit.visitor_reserve if notification.kind in Notification.VISITOR_KINDS else 0
        grant = ratelimit.take("email", 1, limit, reserve=reserve)
        if not grant.granted:
            send_later(notification_id, notification.expires_at, countdown=grant.wait)
            return Outcome.THROTTLED
    # The claim, the send and its record are one step for the soft time limit and
    # for a termination (core.interruptions): no SoftTimeLimitExceeded lands in
    # between (or is taken for an SMTP error below), and a task terminated when its
    # broker connection drops stops before the claim or after the record, so the
    # redelivered message finds the row queued or sent, never sending under a
    # dead lease.
    with uninterrupted():
        # The claim need not wait for the disk: a claim lost in a crash of PostgreSQL
        # leaves the row queued, as an expired one leaves it sending, and either is
        # sent again. What must be durable is the record that it was sent, below.
        with commits_not_waiting_for_disk():
            claimed = claim(Notification.objects.filter(pk=notification_id), task_id)
        if not claimed:
            return Outcome.SKIPPED
        # No re-read after the claim: it changes only status and lease fields, and
        # the message's content (what build_message reads) never changes.
        return _send_claimed(notification, attempt)


def _claim_in_one_statement(notification_id: int, task_id: str) -> Notification | None:
    now = timezone.now()
    params = {
        "id": notification_id,
        "task_id": task_id,
        "now": now,
        "lease_expires_at": now + settings.NOTIFICATION_LEASE_TIMEOUT,
    }
    rows = fetch_rows(sql.CLAIM_TO_SEND, params)
    return instance_from_row(Notification, rows[0]) if rows else None


def _send_claimed(notification: Notification, attempt: Attempt) -> Outcome:
    """Send the row this task has just claimed and record how it went (inside the caller's uninterrupted())."""
    task_id = attempt.task_id
    try:
        mailer.send(build_message(notification))
    except Exception as exc:  # classified just below; anything unknown is a permanent failure
        error = describe_smtp_error(exc)
        if is_transient(exc) and not attempt.is_last:
            hold_for_retry([notification.pk], task_id, attempt.retry_in, error)
            raise TransientSendError(error) from exc
        finish([notification.pk], task_id, Status.FAILED, error=error)
        logger.error("notification %s failed (task %s): %s", notification.pk, task_id, error)
        return Outcome.FAILED
    finish([notification.pk], task_id, Status.SENT)
    # The id, not the address: INFO logs are read widely, and the row says where it went.
    logger.info("notification %s sent (task %s)", notification.pk, task_id)
    return Outcome.SENT


def rate_limit() -> ratelimit.RateLimit | None:
    return ratelimit.RateLimit(*settings.EMAIL_RATE_LIMIT) if settings.EMAIL_RATE_LIMIT else None


def claimable(now: datetime, task_id: str = "") -> Q:
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


def claim(rows: QuerySet[Notification], task_id: str) -> int:
    now = timezone.now()
    return rows.filter(claimable(now, task_id)).update(
        status=Status.SENDING,
        lease_owner=task_id,
        lease_expires_at=now + settings.NOTIFICATION_LEASE_TIMEOUT,
        attempts=F("attempts") + 1,
        task_id=task_id,
        updated_at=now,
    )


def expire_if_late(notification: Notification) -> bool:
    if notification.expires_at is None or notification.expires_at > timezone.now():
        return False
    Notification.objects.filter(claimable(timezone.now()), pk=notification.pk).update(
        **final(Status.EXPIRED, last_error="Expired before it could be sent.", updated_at=timezone.now())
    )
    logger.info("notification %s expired at %s, not sent", notification.pk, notification.expires_at)
    return True


def finish(ids: list[int], task_id: str, status: str, *, error: str = "") -> None:
    now = timezone.now()
    sent_at = now if status == Status.SENT else None
    Notification.objects.filter(pk__in=ids, lease_owner=task_id, status=Status.SENDING).update(
        **final(status, sent_at=sent_at, last_error=error, lease_owner="", lease_expires_at=None, updated_at=now)
    )


def release(ids: list[int], task_id: str) -> int:
    """Put rows this task claimed but never tried back to queued and free, for any task to take; how many.

    The claim's attempt is taken back too: stopping at a time limit is not a try.
    """
    return Notification.objects.filter(pk__in=ids, lease_owner=task_id, status=Status.SENDING).update(
        status=Status.QUEUED,
        lease_owner="",
        lease_expires_at=None,
        attempts=F("attempts") - 1,
        updated_at=timezone.now(),
    )


def hold_for_retry(ids: list[int], task_id: str, retry_in: int, error: str) -> None:
    """Put the rows back to queued, leased to this task through the retry's countdown, for that retry to take."""
    until = timezone.now() + timedelta(seconds=retry_in) + settings.NOTIFICATION_LEASE_TIMEOUT
    Notification.objects.filter(pk__in=ids, lease_owner=task_id, status=Status.SENDING).update(
        status=Status.QUEUED, last_error=error, lease_expires_at=until, updated_at=timezone.now()
    )
    logger.warning("notifications %s: task %s will retry in %ss: %s", ids, task_id, retry_in, error)


def resend(notification_id: int, task_id: str | None = None) -> bool:
    """Send a failed email again (staff action). False when it is not failed, or carried a credential.

    A failed reset or confirmation email has had its link removed; the customer asks for a new one.
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update()
            .filter(pk=notification_id, status=Status.FAILED)
            .exclude(kind__in=Notification.CREDENTIAL_KINDS)
            .first()
        )
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


def retry_sending(notification_id: int, *, actor_id: int | None, task_id: str) -> None:
    """Retry a send_notification task from its result (ops' "Retry"): resend a failed email, or send a stuck one."""
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        raise Refused(f"notification {notification_id} does not exist")
    if notification.status == Status.FAILED:
        if not resend(notification.pk, task_id=task_id):
            raise ValueError(f"notification {notification.pk} carried a one-time link; the customer asks for a new one")
    elif Notification.objects.filter(claimable(timezone.now()), pk=notification.pk).exists():
        send_later(notification.pk, notification.expires_at, on_commit=True, task_id=task_id)
    else:
        raise Refused(f"notification {notification.pk} is {notification.status}; nothing to retry")


def cancel_queued(notification_id: int) -> bool:
    """Cancel an email that has not gone out yet (staff action). False when it is not queued."""
    return bool(
        Notification.objects.filter(pk=notification_id, status=Status.QUEUED).update(
            **final(Status.CANCELLED, last_error="Cancelled by staff.", updated_at=timezone.now())
        )
    )
