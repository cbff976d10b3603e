from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops import running


class Command(BaseCommand):
    help = (
        "Show what each worker runs now: every running task with its id, queue, how long it has run and the object "
        "it works on (order, email, campaign, report). Like `celery inspect active`, on every supported broker; "
        "lists the workers that answer within --timeout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout", type=float, help="Seconds to wait for the workers' answers (default: the health check's)."
        )

    def handle(self, *args: Any, timeout: float | None, **options: Any) -> None:
        if timeout is not None and timeout <= 0:
            raise CommandError("--timeout must be more than zero seconds.")
        try:
            workers = running.active_tasks(timeout)
        except Exception as exc:  # Kombu raises many kinds of connection errors
            raise CommandError(f"cannot reach the broker to ask the workers: {exc}") from None
        if not workers:
            self.stdout.write("No worker answered; none is running, or none can reach the broker.")
            return
        for worker in workers:
            count = len(worker.tasks)
            self.stdout.write(f"{worker.worker}: {'idle' if not count else f'{count} running'}")
            for task in worker.tasks:
                since = "" if task.started_seconds_ago is None else f", for {task.started_seconds_ago:.0f}s"
                self.stdout.write(f"  {task.name}[{task.id}] (queue {task.queue or '?'}{since})")
                self.stdout.write(f"    on {task.subject or '-'}")
