from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_celery_results.models import TaskResult

from ops import catalog
from ops.models import TaskRun
from ops.publish import recorded_arguments


class Command(BaseCommand):
    help = "Show what is known about one task id: its stored result, what it worked on, and retries."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_id")

    def handle(self, *args: Any, task_id: str, **options: Any) -> None:
        result = TaskResult.objects.filter(task_id=task_id).first()
        run = TaskRun.objects.filter(task_id=task_id).first()
        if result is None and run is None:
            raise CommandError(
                f"Nothing is known about {task_id!r}: no stored result (it has not run yet, it does not store "
                "results, or it expired) and it was not run by hand."
            )
        lines = [f"task id:   {task_id}"]
        if result is not None:
            lines += [
                f"task:      {result.task_name}",
                f"state:     {result.status}",
                f"worker:    {result.worker or '—'}",
                f"created:   {result.date_created:%Y-%m-%d %H:%M:%S %Z}",
                f"done:      {result.date_done:%Y-%m-%d %H:%M:%S %Z}" if result.date_done else "done:      —",
            ]
            if result.periodic_task_name:
                lines.append(f"schedule:  {result.periodic_task_name}")
            try:
                task_args, task_kwargs = recorded_arguments(result.task_args, result.task_kwargs)
                lines.append(f"arguments: args {task_args}, kwargs {task_kwargs}")
                target = catalog.subject_of(result.task_name or "", task_args, task_kwargs)
                if target is not None:
                    lines.append(f"about:     {target._meta.label} {target.pk} ({target})")
            except ValueError:
                lines.append("arguments: not recorded as JSON")
            lines.append(f"result:    {result.result}")
            if result.traceback:
                lines.append("traceback: " + result.traceback.strip().splitlines()[-1])
        if run is not None:
            who = run.requested_by or "manage.py"
            lines.append(f"sent by:   {who} ({run.get_source_display()}) at {run.requested_at:%Y-%m-%d %H:%M:%S %Z}")
            if run.retry_of:
                lines.append(f"retry of:  {run.retry_of}")
        for retry in TaskRun.objects.filter(retry_of=task_id):
            lines.append(
                f"retried as {retry.task_id} by {retry.requested_by or 'manage.py'} at {retry.requested_at:%Y-%m-%d %H:%M:%S}"
            )
        self.stdout.write("\n".join(lines))
