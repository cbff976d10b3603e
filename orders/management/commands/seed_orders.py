from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from orders.seeding import seed_orders

# Reports cover days from 1900 on (reports.services.FIRST_DAY); older orders would only be noise.
FIRST_SEED_DAY = date(1900, 1, 1)


def parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date; use YYYY-MM-DD.") from None


class Command(BaseCommand):
    help = (
        "Bulk-create realistic historical orders (1-3 lines each, mostly completed) placed between --start and "
        "--end, for reports and benchmarks. The orders are records only; no tasks are sent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, required=True, help="How many orders to create.")
        parser.add_argument("--start", help="First day (YYYY-MM-DD, TIME_ZONE). Default: 90 days ago.")
        parser.add_argument("--end", help="Last day, inclusive (YYYY-MM-DD). Default: today.")
        parser.add_argument("--customers", type=int, default=200, help="Spread orders over this many customers.")
        parser.add_argument("--seed", type=int, help="Random seed, for the same data every time.")

    def handle(
        self, *args: Any, count: int, start: str | None, end: str | None, customers: int, **options: Any
    ) -> None:
        if count < 1:
            raise CommandError("--count must be at least 1.")
        if customers < 1:
            raise CommandError("--customers must be at least 1.")
        today = timezone.localdate()
        last = parse_date(end) if end else today
        first = parse_date(start) if start else last - timedelta(days=89)
        if first > last:
            raise CommandError(f"--start {first} is after --end {last}.")
        if last > today:
            raise CommandError(f"--end {last} cannot be in the future: seeded orders are history.")
        if first < FIRST_SEED_DAY:
            raise CommandError(f"--start {first} is before {FIRST_SEED_DAY}; reports cannot show older orders.")
        with tqdm(total=count, unit="order", file=self.stderr, disable=options["verbosity"] == 0) as bar:
            made = seed_orders(
                count=count, start=first, end=last, customers=customers, seed=options["seed"], progress=bar.update
            )
        self.stdout.write(self.style.SUCCESS(f"Created {made} orders placed between {first} and {last}."))
