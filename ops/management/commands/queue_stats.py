from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ops import health


class Command(BaseCommand):
    help = "Show how many messages wait in each queue, and which workers answer a ping."

    def handle(self, *args: Any, **options: Any) -> None:
        broker = health.broker()
        if not broker.ok:
            raise CommandError(broker.detail)
        for queue, depth in broker.data["queues"].items():
            self.stdout.write(f"{queue:<15} {depth:>8} waiting")
        workers = health.workers()
        self.stdout.write(f"workers: {workers.detail}")
        for name in workers.data.get("online", []):
            self.stdout.write(f"  {name}")
