from __future__ import annotations

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """The sandbox payment gateway and carrier: providers that behave like real ones, without money or parcels."""

    name = "sandbox"
    verbose_name = "Sandbox providers"
