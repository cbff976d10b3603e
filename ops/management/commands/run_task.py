from __future__ import annotations

import time
from typing import Any

from celery.result import AsyncResult
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config import celery_app
from core.errors import FieldErrors
from ops import catalog, runs


class Command(BaseCommand):
    help = (
        "Send a project task by name, checked like the schedule admin checks it (a registered task, arguments "
        "that fit its signature, a real queue). Prints the task id, and with --wait its result. Shell access to "
        "manage.py is operator access; --user records (and checks the permission of) the person running it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Task name, e.g. orders.tasks.check_pending_orders")
        parser.add_argument(
            "--args", dest="task_args", default="[]", help='Positional arguments as a JSON list, e.g. "[42]".'
        )
        parser.add_argument(
            "--kwargs",
            dest="task_kwargs",
            default="{}",
            help="Keyword arguments as a JSON object, e.g. '{\"order_id\": 42}'.",
        )
        parser.add_argument("--queue", help="Send to this queue instead of the routing table's choice.")
        parser.add_argument("--countdown", type=float, help="Seconds to wait before the task may run.")
        parser.add_argument("--wait", action="store_true", help="Wait for the result and print it.")
        parser.add_argument("--timeout", type=float, default=60, help="Seconds to wait with --wait (default 60).")
        parser.add_argument("--user", help="Username to record as the runner; needs the run-task permission.")

    def handle(self, *args: Any, name: str, wait: bool, timeout: float, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user is called {options['user']!r}.")
        try:
            task_args, task_kwargs = catalog.parse_json_arguments(options["task_args"], options["task_kwargs"])
            run = runs.run_task(
                name, task_args, task_kwargs, queue=options["queue"], countdown=options["countdown"], user=user
            )
        except FieldErrors as exc:
            raise CommandError(str(exc)) from None
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(run.task_id)
        if wait:
            self._wait(run.task_id, timeout)

    def _wait(self, task_id: str, timeout: float) -> None:
        result = AsyncResult(task_id, app=celery_app)
        deadline = time.monotonic() + timeout
        while not result.ready():
            if time.monotonic() > deadline:
                raise CommandError(f"No result after {timeout:g} s (state {result.state}). Is a worker running?")
            time.sleep(0.1)  # the database result backend is polled; keep it quick
        if result.successful():
            self.stdout.write(self.style.SUCCESS(f"{result.state}: {result.result!r}"))
        else:
            raise CommandError(f"{result.state}: {result.result!r}")
