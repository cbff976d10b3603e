"""The Celery application, configured from Django settings (CELERY_ namespace)."""

from __future__ import annotations

import os
from logging.config import dictConfig
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config", task_cls="core.base_task:ProjectTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Every worker proves that it takes work, for its health check (ops/liveness.py).
app.steps["consumer"].add("ops.liveness:LivenessProbe")


@signals.setup_logging.connect
def configure_logging_from_django(**kwargs: Any) -> None:
    """Use Django's LOGGING in worker and beat, instead of Celery's own set-up."""
    from django.conf import settings

    dictConfig(settings.LOGGING)
