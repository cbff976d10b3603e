from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Connect worker signal handlers; they only fire inside worker processes.
        from ops import worker  # noqa: F401
