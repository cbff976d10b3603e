"""Request counters behind the sign-up and password-reset limits (accounts.throttle)."""

from __future__ import annotations

from django.db import models


class Throttle(models.Model):
    """Hits on one key (e.g. "reset-ip:203.0.113.9") in the window that started at window_start."""

    key = models.CharField(max_length=128, primary_key=True)
    window_start = models.DateTimeField(db_index=True)
    hits = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"{self.key}: {self.hits} since {self.window_start:%Y-%m-%d %H:%M:%S}"
