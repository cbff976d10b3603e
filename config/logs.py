"""The LOGGING setting's dictionary: one configuration for every process, at the level LOG_LEVEL names.

Celery is told not to touch logging (see config/celery.py), so worker and beat
logs go through this too.
"""

from __future__ import annotations

from typing import Any


def logging_config(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "task_context": {"()": "core.logging.TaskContextFilter"},
            "hide_probes_received": {"()": "ops.liveness.HideProbesReceived"},
            "redact_secrets": {"()": "ops.redaction.RedactSecretsFilter"},
        },
        "formatters": {
            "standard": {
                "format": "%(asctime)s %(levelname)-7s %(processName)s %(name)s %(task_ref)s%(message)s",
            },
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "standard",
                "filters": ["task_context", "redact_secrets"],
            },
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            "celery": {"level": level},
            # ops.worker logs every task's outcome with its duration and object; Celery's
            # own per-task lines would say the same thing twice.
            "celery.app.trace": {"level": "WARNING"},
            "celery.worker.strategy": {"filters": ["hide_probes_received"]},
        },
    }
