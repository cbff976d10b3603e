"""Celery's options task by task: the queue each task goes to (CELERY_TASK_ROUTES) and what it stores (CELERY_TASK_ANNOTATIONS)."""

from __future__ import annotations

# The routing table. Explicit task names first (Celery checks exact names before
# patterns), then module defaults; anything else goes to the default queue.
ROUTES = {
    # Bulk email runs on low_priority, so a campaign or the digest never delays order emails.
    "notifications.tasks.launch_campaign": {"queue": "low_priority"},
    "notifications.tasks.send_campaign_chunk": {"queue": "low_priority"},
    "notifications.tasks.send_weekly_digest": {"queue": "low_priority"},
    "notifications.tasks.send_digest_chunk": {"queue": "low_priority"},
    "notifications.tasks.cleanup_notifications": {"queue": "low_priority"},
    # Module defaults.
    "notifications.tasks.*": {"queue": "high_priority"},
    "reports.tasks.*": {"queue": "low_priority"},
    "ops.tasks.*": {"queue": "low_priority"},
    "orders.tasks.*": {"queue": "default"},
}

# Which tasks store their results, task by task. Every stored state is a write to
# the results table (STARTED alone costs a get_or_create: four round trips), and a
# task whose own row already records what happened does not need the copy. Tasks
# not listed store every state. Failures are stored for every task, listed ones
# included (CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED), so staff always find them
# in the admin and can retry them.
ANNOTATIONS = {
    # The Notification row holds status, attempts, last error, sent_at and the task id;
    # a result row per email would only repeat it (the outbox admin is where staff look).
    "notifications.tasks.send_notification": {"ignore_result": True, "track_started": False},
    # Results stay, for the order admin's links, but the Order row already says
    # "processing" (with its lease holder), so STARTED is not written.
    "orders.tasks.process_order": {"track_started": False},
}
