"""Sales reports: one row per report, with its figures, CSV and chart."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Report(models.Model):
    class Kind(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly"
        MONTHLY = "monthly", "Monthly"
        CUSTOM = "custom", "Custom range"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    REVENUE_DEFINITION = (
        "Revenue counts completed orders only, by the date they were placed in the shop's time zone ({zone})."
    )

    kind = models.CharField(max_length=8, choices=Kind.choices)
    # Both inclusive, as dates in TIME_ZONE; weeks are ISO weeks (Monday to Sunday).
    period_start = models.DateField()
    period_end = models.DateField()
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, help_text="Empty when beat made it."
    )
    csv_file = models.FileField(upload_to="reports/", blank=True)
    chart = models.FileField(upload_to="reports/", blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    slices_total = models.PositiveSmallIntegerField(default=0)
    slices_done = models.PositiveSmallIntegerField(default=0)
    task_id = models.CharField(max_length=255, blank=True, help_text="The task that started the last generation.")
    # The report's own steps (starting the slices, then finishing) are claimed with a
    # lease: who holds it and until when. An expired lease is what "stuck" means; the
    # slices hold leases of their own (ReportSlice) while they run.
    lease_owner = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The group id of the chord of its slices, to call the chord off when the report is cancelled.
    chord_id = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times its generation was started.")
    finish_attempts = models.PositiveSmallIntegerField(default=0, help_text="Times its finish was started.")
    # When it was last sent to the workers while pending: the sweep re-sends it after REPORT_REQUEUE_AFTER.
    queued_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_end", "-created_at"]
        # Viewing and downloading needs "view report"; asking for a custom one needs this.
        permissions = [
            ("request_report", "Can request custom reports"),
            ("cancel_report", "Can cancel reports being generated"),
        ]
        constraints = [
            # Scheduled reports exist once per period; regenerating replaces them.
            models.UniqueConstraint(
                fields=["kind", "period_start", "period_end"],
                condition=~Q(kind="custom"),
                name="report_one_per_scheduled_period",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gte=models.F("period_start")), name="report_period_in_order"
            ),
            models.CheckConstraint(condition=Q(progress__lte=100), name="report_progress_at_most_100"),
        ]
        indexes = [
            # The sweep looks at unfinished reports only: a handful among years of done ones.
            models.Index(
                fields=["status"], condition=Q(status__in=["pending", "running"]), name="report_unfinished_idx"
            ),
        ]

    def __str__(self) -> str:
        if self.period_start == self.period_end:
            return f"{self.get_kind_display()} report {self.period_start}"
        return f"{self.get_kind_display()} report {self.period_start} to {self.period_end}"

    @property
    def currency(self) -> str:
        """The currency of the report's amounts: the one it was made in, or the shop's for a report not made yet."""
        return self.summary.get("currency") or settings.SHOP_CURRENCY

    @property
    def is_final(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED, self.Status.CANCELLED)


class ReportSlice(models.Model):
    """One slice of a report's period: its own claim, and its partial figures once aggregated.

    Finishing a report reads these rows, so it never depends on the chord's
    counter being exact: a slice that completes twice, or one re-sent by the
    sweep outside the chord, is counted once here.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="slices")
    period_start = models.DateField()
    period_end = models.DateField()
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.PENDING)
    # The last task sent for it (revoked when the report is cancelled), and the claim of the one running it.
    task_id = models.CharField(max_length=255, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # The partial aggregates, as JSON (see figures.aggregate_figures).
    figures = models.JSONField(default=dict, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["report", "period_start"]
        constraints = [
            models.UniqueConstraint(fields=["report", "period_start"], name="report_slice_once_per_start"),
        ]

    def __str__(self) -> str:
        return f"slice {self.period_start} to {self.period_end} of report {self.report_id}"
