"""Notifications: the email outbox, campaigns, marketing preferences and the shared send-rate bucket."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import EmailValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SENDING = "sending", "Sending"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    class Audience(models.TextChoices):
        ALL_CUSTOMERS = "all_customers", "All active customers who have not unsubscribed"
        ORDERED_SINCE = "ordered_since", "Customers who ordered since a date"

    name = models.CharField(max_length=200, help_text="For staff; customers see the subject.")
    subject = models.CharField(max_length=200)
    body = models.TextField(
        help_text="Plain text. {{ first_name }}, {{ username }} and {{ email }} are filled in for each customer."
    )
    audience = models.CharField(max_length=20, choices=Audience.choices, default=Audience.ALL_CUSTOMERS)
    ordered_since = models.DateField(null=True, blank=True, help_text="For the 'ordered since' audience.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    total = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=255, blank=True, help_text="The task that launched the sending.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    launched_at = models.DateTimeField(
        null=True, blank=True, help_text="When every recipient's message was written; the campaign can finish after."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(audience="ordered_since") | Q(ordered_since__isnull=False),
                name="campaign_ordered_since_needs_a_date",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def progress(self) -> int:
        """Percent of the audience that has been dealt with (sent or failed)."""
        return round(100 * (self.sent + self.failed) / self.total) if self.total else 0


class Notification(models.Model):
    """One email, as a row before it is a task: the outbox."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    class Kind(models.TextChoices):
        ORDER_COMPLETED = "order_completed", "Order completed"
        ORDER_FAILED = "order_failed", "Order failed"
        ORDER_CANCELLED = "order_cancelled", "Order cancelled"
        PASSWORD_RESET = "password_reset", "Password reset"
        EMAIL_CONFIRMATION = "email_confirmation", "Sign-up confirmation"
        SIGNUP_EXISTING = "signup_existing", "Sign-up with a registered address"
        REPORT_READY = "report_ready", "Report ready"
        TEST = "test", "Test email"
        CAMPAIGN = "campaign", "Campaign"
        DIGEST = "digest", "Weekly digest"

    # Sent one by one on high_priority; the rest go out in chunks on low_priority.
    BULK_KINDS = (Kind.CAMPAIGN, Kind.DIGEST)
    # Kinds whose body carries a live credential: a link that sets a password or logs
    # someone in. Only the recipient may ever read it, so the body is never shown in
    # the admin, is replaced by REDACTED_BODY once the row is final (sent, failed,
    # expired or cancelled), and the row is deleted when the credential expires
    # (credential_expires_at), not after NOTIFICATION_RETENTION. A new kind like
    # these is added here and gets all of that.
    CREDENTIAL_KINDS = (Kind.PASSWORD_RESET, Kind.EMAIL_CONFIRMATION)
    # Kinds any visitor can make the shop send (a reset, a sign-up): they leave part of
    # EMAIL_RATE_LIMIT for order emails, so a flood of them never starves those.
    VISITOR_KINDS = (Kind.PASSWORD_RESET, Kind.EMAIL_CONFIRMATION, Kind.SIGNUP_EXISTING)
    REDACTED_BODY = "[Removed once this email left the outbox: it carried a one-time link.]"
    FINAL_STATUSES = (Status.SENT, Status.FAILED, Status.EXPIRED, Status.CANCELLED)

    recipient = models.CharField(max_length=254, validators=[EmailValidator()])
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    subject = models.CharField(max_length=255)
    body_text = models.TextField()
    body_html = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Makes the same message impossible to create twice, e.g. "order:42:completed".
    dedup_key = models.CharField(max_length=255, unique=True)
    campaign = models.ForeignKey(Campaign, null=True, blank=True, on_delete=models.CASCADE, related_name="messages")
    # Generic link to what the message is about, for the admin (order, report…).
    subject_object = models.CharField(max_length=64, blank=True, help_text="e.g. orders.order:42")
    lease_owner = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=255, blank=True, help_text="The last task that handled it.")
    requeued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Not sent after this moment.")
    credential_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="For a kind that carries a credential: when it stops working (row deleted)."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The stale sweep and chunk senders look for unfinished rows only.
            models.Index(
                fields=["status", "created_at"],
                name="notification_unfinished_idx",
                condition=Q(status__in=["queued", "sending"]),
            ),
            # A campaign chunk walks its id range by status; counts group by it.
            models.Index(fields=["campaign", "status"], name="notification_campaign_idx"),
            # Cleanup deletes old final rows by date.
            models.Index(fields=["status", "sent_at"], name="notification_cleanup_idx"),
            # ...and the rows whose credential expired, a handful among millions.
            models.Index(
                fields=["credential_expires_at"],
                name="notification_credential_idx",
                condition=Q(credential_expires_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {self.recipient}"

    @property
    def carries_credential(self) -> bool:
        return self.kind in self.CREDENTIAL_KINDS


class EmailPreference(models.Model):
    """A customer's choice about marketing email (campaigns and the digest). Order emails always go out."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_preference")
    unsubscribed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "email preference"

    def __str__(self) -> str:
        return f"{self.user} ({'unsubscribed' if self.unsubscribed_at else 'subscribed'})"


class SendRateBucket(models.Model):
    """A token bucket in the database, shared by every worker on every machine (see notifications.ratelimit)."""

    name = models.CharField(max_length=64, unique=True)
    tokens = models.FloatField()
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.tokens:.1f} tokens"
