from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Q
from django.utils import timezone
from tqdm import tqdm

from core.base_task import Attempt
from orders.models import Order
from orders.services import actions, pipeline


class Command(BaseCommand):
    help = (
        "Send every pending order (and every order whose lease expired) to the workers, "
        "or with --sync process them here, one by one, without a worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sync", action="store_true", help="Process inline instead of enqueueing.")

    def handle(self, *args: Any, sync: bool, **options: Any) -> None:
        waiting = Q(status=Order.Status.PENDING) | Q(
            status=Order.Status.PROCESSING, lease_expires_at__lt=timezone.now()
        )
        ids = list(Order.objects.filter(waiting).order_by("created_at").values_list("pk", flat=True))
        if not ids:
            self.stdout.write("No pending orders.")
            return
        if not sync:
            sent = sum(actions.requeue_order(pk) for pk in ids)
            self.stdout.write(self.style.SUCCESS(f"Sent {sent} order(s) to the workers."))
            return
        outcomes: Counter[str] = Counter()
        for pk in tqdm(ids, unit="order", file=self.stderr, disable=options["verbosity"] == 0):
            try:
                outcomes[pipeline.process_order(pk, attempt=Attempt(f"sync-{uuid.uuid4()}")).value] += 1
            except pipeline.TransientOrderError as exc:
                outcomes["will retry"] += 1
                self.stderr.write(f"order {pk}: {exc} (left for the sweep to retry)")
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self.stdout.write(self.style.SUCCESS(f"Processed {len(ids)} order(s): {summary}."))
