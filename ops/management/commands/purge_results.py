from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django_celery_results.models import TaskResult
from tqdm import tqdm

from config.env import parse_duration

# Rows deleted per statement: big enough to be quick, small enough not to lock the table for long.
PURGE_BATCH_SIZE = 5000


class Command(BaseCommand):
    help = (
        "Delete task results older than --older-than (e.g. 7d, 12h, 90m), in batches, with progress. "
        "Beat's celery.backend_cleanup already does this daily for CELERY_RESULT_EXPIRES."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="Age, e.g. 7d, 12h or 90m.")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")

    def handle(self, *args: Any, older_than: str, dry_run: bool, **options: Any) -> None:
        try:
            age = parse_duration(older_than)
        except ValueError:
            raise CommandError(f"--older-than {older_than!r} is not a duration; use e.g. 7d, 12h or 90m.") from None
        if age.total_seconds() <= 0:
            raise CommandError("--older-than must be more than zero.")
        try:
            cutoff = timezone.now() - age
        except OverflowError:
            raise CommandError(
                f"--older-than {older_than!r} reaches back before the year 1; no result is that old."
            ) from None
        old = TaskResult.objects.filter(date_done__lt=cutoff)
        total = old.count()
        if dry_run:
            self.stdout.write(f"{total} result(s) finished before {cutoff:%Y-%m-%d %H:%M:%S %Z} would be deleted.")
            return
        deleted = 0
        with tqdm(total=total, unit="result", file=self.stderr, disable=options["verbosity"] == 0) as bar:
            while ids := list(old.values_list("pk", flat=True)[:PURGE_BATCH_SIZE]):
                count, _ = TaskResult.objects.filter(pk__in=ids).delete()
                deleted += count
                bar.update(count)
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} result(s) finished before {cutoff:%Y-%m-%d %H:%M:%S %Z}.")
        )
