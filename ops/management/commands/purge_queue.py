from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import Refused
from ops import purging


class Command(BaseCommand):
    help = (
        "Delete the messages waiting in one of the project's task queues (high_priority, default, low_priority), "
        "like `celery purge -Q`. Shows the count and asks first; --yes skips the question. Tasks a worker has "
        "taken already are not touched. Orders and emails still pending in the database are re-sent by their sweeps."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queue", help="The queue to empty: one of CELERY_TASK_QUEUES.")
        parser.add_argument("--yes", action="store_true", help="Purge without asking (for scripts).")

    def handle(self, *args: Any, queue: str, yes: bool, **options: Any) -> None:
        try:
            count = purging.waiting(queue)
        except Refused as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:  # Kombu raises many kinds of connection errors
            raise CommandError(f"cannot reach the broker: {exc}") from None
        if count == 0:
            self.stdout.write(f"{queue} is empty; nothing to purge.")
            return
        self.stdout.write(f"{queue} holds {count} waiting message(s).")
        if not yes and not self._confirmed(queue):
            self.stdout.write("Cancelled; nothing was purged.")
            return
        try:
            purged = purging.purge(queue)
        except Exception as exc:
            raise CommandError(f"cannot purge {queue}: {exc}") from None
        self.stdout.write(self.style.SUCCESS(f"Purged {purged} message(s) from {queue}."))

    def _confirmed(self, queue: str) -> bool:
        try:
            answer = input(f"Delete them from {queue}? Type 'yes' to continue: ")
        except EOFError:
            raise CommandError("no answer to the confirmation (stdin is closed); pass --yes in scripts.") from None
        return answer.strip().lower() == "yes"
