"""Operations records: manual task runs and retries (an audit trail), and beat's heartbeat."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class TaskRun(models.Model):
    """A task sent by a person: "Run now" on a schedule, "Retry" on a result, or manage.py run_task."""

    class Source(models.TextChoices):
        RUN_NOW = "run_now", "Run now (schedule)"
        RETRY = "retry", "Retry (result)"
        COMMAND = "command", "manage.py run_task"

    task_name = models.CharField(max_length=255)
    task_id = models.CharField(max_length=255, unique=True, help_text="The new task's id.")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    options = models.JSONField(default=dict, blank=True, help_text="queue, priority, expires, countdown, headers")
    source = models.CharField(max_length=8, choices=Source.choices)
    retry_of = models.CharField(max_length=255, blank=True, db_index=True, help_text="The task id that was retried.")
    periodic_task_name = models.CharField(max_length=255, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    requested_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-requested_at"]
        permissions = [
            ("run_task", "Can run and retry tasks by hand"),
            # Queue depths, worker and beat host names and raw errors: the overview page,
            # /metrics for a session, and the details of /health/.
            ("view_operations", "Can view operations data (overview, metrics, health details)"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()}: {self.task_name} [{self.task_id}]"


class BeatHeartbeat(models.Model):
    """One row per beat process; the leader refreshes `seen_at` on every tick."""

    class Role(models.TextChoices):
        LEADER = "leader", "Leader (sending)"
        STANDBY = "standby", "Standby (waiting for the lock)"

    node = models.CharField(max_length=255, unique=True, help_text="host:pid")
    role = models.CharField(max_length=8, choices=Role.choices)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)
    skipped_schedules = models.JSONField(
        default=dict, blank=True, help_text="Schedules this beat could not run at its last read: name → why."
    )

    class Meta:
        ordering = ["-seen_at"]

    def __str__(self) -> str:
        return f"beat {self.node} ({self.role})"


class RecentAnswer(models.Model):
    """The last answer to a question that is slow to ask, shared by every web process with its age.

    /health/, /metrics and the overview all need to know which workers are online;
    asking means a broadcast and a 0.5 s wait for replies, so one answer is kept
    here and reused until it is WORKER_PING_MAX_AGE old.
    """

    key = models.CharField(max_length=64, primary_key=True)
    answer = models.JSONField()
    asked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.key} (asked at {self.asked_at:%Y-%m-%d %H:%M:%S})"


class TaskResultTally(models.Model):
    """Task results per settled hour of `date_done`, task and state: /metrics adds these up instead of a full count.

    An hour is counted once it is settled (over an hour old); rows of that hour
    rarely change after that. The metric counts the newest hours live, bounded by
    the date_done index (see ops/result_counts.py).
    """

    hour = models.DateTimeField()
    task_name = models.CharField(max_length=255)
    status = models.CharField(max_length=50)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "task_name", "status"], name="task_result_tally_unique")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.task_name} {self.status}: {self.count}"


class Failure(models.Model):
    """Work that failed for good: a task that ended in FAILURE, the domain's own failures included.

    Kept for FAILURE_RETENTION, independent of task results, so a failure stays
    listed (and replayable) after its result expired. Failures with the same task,
    error type and error text (numbers, ids and addresses left out) share a
    fingerprint: the admin's failures page counts them as one group.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        REPLAYED = "replayed", "Replayed"
        DISMISSED = "dismissed", "Dismissed"

    task_id = models.CharField(max_length=255, unique=True)
    task_name = models.CharField(max_length=255)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    periodic_task_name = models.CharField(max_length=255, blank=True)
    # What the task worked on, from its `subject` declaration: "orders.Order" and "42".
    subject_label = models.CharField(max_length=100, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    error_type = models.CharField(max_length=255)
    error = models.TextField(blank=True)
    # The error text with what varies from one failure to the next left out.
    label = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=32)
    failed_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    resolved_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, help_text="Why it was dismissed.")
    replayed_as = models.CharField(max_length=255, blank=True, help_text="The task id of the replay.")

    class Meta:
        ordering = ["-failed_at", "-id"]
        indexes = [
            # The failures page groups open failures; the metrics count recent ones.
            models.Index(fields=["status", "fingerprint"], name="failure_open_group_idx"),
            models.Index(fields=["failed_at"], name="failure_failed_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} failed: {self.label}"


class ScheduleChange(models.Model):
    """One change to a schedule (a periodic task, or an interval, crontab, solar or clocked row): who, when, what.

    Written by the admin and by manage.py setup_schedules; nobody edits or deletes it.
    """

    class Action(models.TextChoices):
        ADDED = "added", "Added"
        CHANGED = "changed", "Changed"
        DELETED = "deleted", "Deleted"

    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    via = models.CharField(max_length=64, help_text="The admin, or the command that made the change.")
    action = models.CharField(max_length=8, choices=Action.choices)
    kind = models.CharField(max_length=32, help_text="periodic task, interval, crontab, solar or clocked")
    object_id = models.CharField(max_length=64)
    object_name = models.CharField(max_length=255)
    # field → [old, new] as text; for an added row old is null, for a deleted one new is.
    changes = models.JSONField(default=dict)

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.kind} {self.object_name!r}"


class TaskApiCall(models.Model):
    """Who asked the staff task API about a task, or to stop it, and what it answered: an audit, read only."""

    class Action(models.TextChoices):
        VIEW = "view", "Looked at it"
        STOP = "stop", "Asked to stop it"

    task_id = models.CharField(max_length=255, db_index=True)
    action = models.CharField(max_length=8, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    outcome = models.CharField(max_length=500, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "task API call"

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.task_id}"
