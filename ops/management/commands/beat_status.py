from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ops import health
from ops.models import BeatHeartbeat


class Command(BaseCommand):
    help = (
        "Say whether beat is alive, from its leader's heartbeat in the database. Exits non-zero when the heartbeat "
        "is missing or older than BEAT_HEARTBEAT_MAX_AGE (compose's health check for beat)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        beat = health.beat()
        for process in BeatHeartbeat.objects.all()[:10]:
            self.stdout.write(f"{process.node:<30} {process.role:<8} last seen {process.seen_at:%Y-%m-%d %H:%M:%S %Z}")
        if not beat.ok:
            raise CommandError(beat.detail)
        self.stdout.write(self.style.SUCCESS(beat.detail))
