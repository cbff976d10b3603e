from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_celery_beat.models import PeriodicTask

from ops import schedules


class Command(BaseCommand):
    help = (
        "Install the project's periodic tasks into django-celery-beat's tables. Missing ones are created by "
        "name; existing ones are never changed, so staff edits in the admin stay. --reset NAME restores one "
        "default; --list shows the defaults beside their current state."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--reset", metavar="NAME", help="Restore this default schedule exactly.")
        group.add_argument("--list", action="store_true", help="Show the defaults and how the database differs.")

    def handle(self, *args: Any, reset: str | None, list: bool, **options: Any) -> None:
        if list:
            self._list()
        elif reset:
            if reset not in schedules.BY_NAME:
                names = ", ".join(repr(name) for name in schedules.BY_NAME)
                raise CommandError(f"No default schedule is called {reset!r}. The defaults are: {names}.")
            schedules.reset(reset)
            self.stdout.write(self.style.SUCCESS(f"Restored {reset!r} to its default."))
        else:
            created = schedules.install_missing()
            for name in created:
                self.stdout.write(f"Created {name!r}.")
            kept = len(schedules.DEFAULTS) - len(created)
            self.stdout.write(
                self.style.SUCCESS(f"{len(created)} schedule(s) created, {kept} already there (left as they are).")
            )

    def _list(self) -> None:
        rows = {
            task.name: task
            for task in PeriodicTask.objects.filter(name__in=schedules.BY_NAME).select_related("interval", "crontab")
        }
        for default in schedules.DEFAULTS:
            task = rows.get(default.name)
            if task is None:
                state = "missing (setup_schedules creates it)"
            else:
                changed = schedules.differences(task)
                state = "default" if not changed else "changed: " + ", ".join(changed)
                last = f", last run {task.last_run_at:%Y-%m-%d %H:%M %Z}" if task.last_run_at else ", never run"
                state += last
            self.stdout.write(
                f"{default.name}\n    {default.task}, {default.describe()}, expires after {default.expire_seconds}s\n    now: {state}"
            )
