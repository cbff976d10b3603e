from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Signal handlers: publish-time argument recording (every process that sends
        # tasks), worker-side connection handling, logs and metrics, beat leadership.
        from ops import beat, publish, worker, worker_metrics  # noqa: F401
