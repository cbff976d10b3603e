from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared plumbing that knows no domain: dispatch, the base task, database and admin helpers."""

    name = "core"
    verbose_name = "Core"
