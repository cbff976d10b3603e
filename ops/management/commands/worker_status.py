from __future__ import annotations

import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ops import liveness


class Command(BaseCommand):
    help = (
        "Say whether the worker NODE on this machine takes work: it ran its own probe task, or was busy with tasks, "
        "within the last three WORKER_PROBE_INTERVALs. Exits non-zero otherwise, also for a worker that answers "
        "pings but fetches nothing (compose's health check for workers)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("node", help="The worker's node name, as given to `celery worker -n`, e.g. default@host.")

    def handle(self, *args: Any, node: str, **options: Any) -> None:
        proof, limit = liveness.last_proof(node), liveness.max_age()
        if proof is None:
            raise CommandError(f"worker {node} has not proved that it takes work ({liveness.liveness_file(node)})")
        age = time.time() - proof
        if age > limit:
            raise CommandError(f"worker {node} took no work for {age:.0f}s (limit {limit:.0f}s)")
        self.stdout.write(self.style.SUCCESS(f"worker {node} took work {age:.0f}s ago"))
