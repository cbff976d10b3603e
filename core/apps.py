from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared plumbing that knows no domain: dispatch, the base task, database and admin helpers."""

    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # Connects the before_task_publish handler that lets any process send a countdown on RabbitMQ.
        from core import delayed_delivery  # noqa: F401
