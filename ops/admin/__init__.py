"""The admin for schedules and results, built on django-celery-beat's and django-celery-results' own.

Adds what they lack: only project tasks can be scheduled, arguments must bind to
the task's signature and queues must exist; a schedule shows its plain-words
schedule, next runs and last results; "Run now" keeps priority and expires and
"Retry" re-sends a result's task, both behind the ops.run_task permission.

Registered from three modules: schedules (periodic tasks and their schedules),
results (task results, runs and beat's heartbeat) and failures (the failures page's
rows and the task API's audit).
"""

from ops.admin import failures, results, schedules

__all__ = ["failures", "results", "schedules"]
