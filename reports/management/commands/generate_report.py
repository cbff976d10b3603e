from __future__ import annotations

from datetime import date
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse
from django.utils import timezone

from core.errors import FieldErrors
from reports.models import Report
from reports.services import files, generation, periods, requesting


def parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} {value!r} is not a date; use YYYY-MM-DD.") from None


class Command(BaseCommand):
    help = (
        "Generate a sales report. daily/weekly/monthly take --date (a day inside the period; default: the "
        "previous period, as beat does); custom takes --start and --end. Enqueues it for the workers, or "
        "with --sync runs it here and prints where the files are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=[kind.value for kind in Report.Kind])
        parser.add_argument("--date", help="A day in the daily, weekly or monthly period (YYYY-MM-DD).")
        parser.add_argument("--start", help="First day of a custom range (YYYY-MM-DD).")
        parser.add_argument("--end", help="Last day of a custom range, included (YYYY-MM-DD).")
        parser.add_argument("--sync", action="store_true", help="Generate here, without a worker.")

    def handle(
        self, *args: Any, kind: str, date: str | None, start: str | None, end: str | None, sync: bool, **options: Any
    ) -> None:
        if kind == Report.Kind.CUSTOM and (date or not (start and end)):
            raise CommandError("A custom report takes --start and --end (and no --date).")
        if kind != Report.Kind.CUSTOM and (start or end):
            raise CommandError(f"A {kind} report takes --date, not --start/--end.")
        try:
            if kind == Report.Kind.CUSTOM:
                first, last = parse_date(start, "--start"), parse_date(end, "--end")
            elif date:
                first, last = periods.period_containing(kind, parse_date(date, "--date"))
            else:
                first, last = periods.previous_period(kind, timezone.localdate())
            report = requesting.request_report(kind=kind, start=first, end=last, regenerate=True, enqueue=not sync)
            if sync:
                report = generation.generate_report_inline(report.pk)
        except CommandError:
            raise
        except FieldErrors as exc:
            raise CommandError(" ".join(m for messages in exc.errors.values() for m in messages)) from None
        except Exception as exc:  # the report is marked failed with the same error
            raise CommandError(f"The report failed: {type(exc).__name__}: {exc}") from exc
        if sync:
            self.stdout.write(self.style.SUCCESS(f"{report} is done: revenue {report.summary['revenue']}."))
            self.stdout.write(f"CSV:   {files.file_path(report.csv_file.name)}")
            self.stdout.write(f"Chart: {files.file_path(report.chart.name)}")
        else:
            url = settings.SITE_URL + reverse("reports:detail", args=[report.pk])
            self.stdout.write(
                f"{report} is {report.status}; follow it at {url} (the CSV and chart appear there when done)."
            )
