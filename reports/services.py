"""Sales reports: figures aggregated in the database, fanned out with a chord, written as CSV and a chart.

Revenue counts completed orders only, by the date they were placed in TIME_ZONE.
A report's period is split into slices of REPORT_SLICE_DAYS. One slice is
aggregated inline; several run as a Celery chord: the slices' partial aggregates
in parallel (each one a pair of GROUP BY queries, never a loop over orders), then
a callback that merges them, streams the CSV to storage, draws the chart and
marks the report done. Nothing is marked done until both files are complete.
"""

from __future__ import annotations

import csv
import logging
import secrets
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max, Min, Sum
from django.db.models.functions import Least, TruncDate
from django.utils import timezone

from core import dispatch
from notifications import services as notification_services
from orders.models import Order, OrderLine, Product
from reports.models import Report

logger = logging.getLogger(__name__)

Kind = Report.Kind
Status = Report.Status
TOP_PRODUCTS = 5
CENT = Decimal("0.01")


class ReportRejected(Exception):
    """The requested period is not acceptable; `errors` maps fields to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


# --- periods -------------------------------------------------------------------------


def period_containing(kind: str, day: date) -> tuple[date, date]:
    """The daily, weekly (ISO, Monday to Sunday) or monthly period that contains `day`."""
    if kind == Kind.DAILY:
        return day, day
    if kind == Kind.WEEKLY:
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=6)
    if kind == Kind.MONTHLY:
        first = day.replace(day=1)
        next_first = (first + timedelta(days=32)).replace(day=1)
        return first, next_first - timedelta(days=1)
    raise ValueError(f"{kind!r} has no fixed period")


def previous_period(kind: str, today: date) -> tuple[date, date]:
    """Yesterday, last ISO week or last month, as beat asks for them."""
    if kind == Kind.DAILY:
        return period_containing(kind, today - timedelta(days=1))
    if kind == Kind.WEEKLY:
        return period_containing(kind, today - timedelta(days=7))
    return period_containing(kind, today.replace(day=1) - timedelta(days=1))


def validate_period(start: date, end: date, *, today: date | None = None) -> None:
    today = today or timezone.localdate()
    errors: dict[str, list[str]] = {}
    if start > today:
        errors["start"] = ["The start cannot be in the future."]
    if end < start:
        errors["end"] = ["The end is before the start."]
    elif (end - start).days + 1 > settings.REPORT_MAX_RANGE_DAYS:
        errors["end"] = [f"A report covers at most {settings.REPORT_MAX_RANGE_DAYS} days."]
    if errors:
        raise ReportRejected(errors)


def slices(start: date, end: date, days: int) -> list[tuple[date, date]]:
    """Consecutive inclusive (start, end) slices of at most `days` days covering the period."""
    result = []
    while start <= end:
        last = min(end, start + timedelta(days=days - 1))
        result.append((start, last))
        start = last + timedelta(days=1)
    return result


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    zone = ZoneInfo(settings.TIME_ZONE)
    return datetime.combine(start, time.min, tzinfo=zone), datetime.combine(
        end + timedelta(days=1), time.min, tzinfo=zone
    )


# --- requesting ---------------------------------------------------------------------


def request_report(
    *, kind: str, start: date, end: date, requested_by_id: int | None = None, regenerate: bool = False,
    enqueue: bool = True,
) -> Report:  # fmt: skip
    """Create the report for a period (or find the scheduled one) and generate it after commit.

    A scheduled period has one report: asking again returns it, and only a failed
    one (or `regenerate=True`) is generated again, replacing its files.
    """
    validate_period(start, end)
    with transaction.atomic():
        if kind == Kind.CUSTOM:
            report = Report.objects.create(
                kind=kind, period_start=start, period_end=end, requested_by_id=requested_by_id
            )
            created = True
        else:
            if (start, end) != period_containing(kind, start):
                raise ReportRejected({"start": [f"{start}–{end} is not a {kind} period."]})
            try:
                with transaction.atomic():
                    report, created = Report.objects.get_or_create(
                        kind=kind, period_start=start, period_end=end, defaults={"requested_by_id": requested_by_id}
                    )
            except IntegrityError:  # created concurrently
                report, created = Report.objects.get(kind=kind, period_start=start, period_end=end), False
            report = Report.objects.select_for_update().get(pk=report.pk)
        if not created:
            busy = report.status in (Status.PENDING, Status.RUNNING)
            if busy or (report.status == Status.DONE and not regenerate):
                return report
            report.status, report.progress, report.error = Status.PENDING, 0, ""
            if requested_by_id:
                report.requested_by_id = requested_by_id
            report.save(update_fields=["status", "progress", "error", "requested_by"])
        if enqueue:
            dispatch.send_on_commit("reports.tasks.generate_report", [report.pk])
    return report


def schedule_report(kind: str, *, today: date | None = None) -> Report:
    """The beat entry point: the report for the previous day, week or month (idempotent per period)."""
    start, end = previous_period(kind, today or timezone.localdate())
    return request_report(kind=kind, start=start, end=end)


def regenerate(report_id: int, *, requested_by_id: int | None = None, task_id: str | None = None) -> Report:
    """Generate a report again, replacing its files (admin action)."""
    with transaction.atomic():
        report = Report.objects.select_for_update().get(pk=report_id)
        if report.status in (Status.PENDING, Status.RUNNING):
            return report
        report.status, report.progress, report.error = Status.PENDING, 0, ""
        if requested_by_id:
            report.requested_by_id = requested_by_id
        report.save(update_fields=["status", "progress", "error", "requested_by"])
        dispatch.send_on_commit("reports.tasks.generate_report", [report.pk], task_id=task_id)
    return report


def retry_generation(args: list, kwargs: dict, *, actor_id: int | None, task_id: str) -> None:
    """Retry a generate_report task from its result (ops' "Retry"): generate the report again."""
    report_id = kwargs.get("report_id", args[0] if args else None)
    report = Report.objects.filter(pk=report_id).first()
    if report is None:
        raise ValueError(f"report {report_id} does not exist")
    if regenerate(report.pk, requested_by_id=actor_id, task_id=task_id).status != Status.PENDING:
        raise ValueError(f"{report} is being generated right now")


# --- generating ---------------------------------------------------------------------


def start_generation(report_id: int, *, task_id: str) -> list[tuple[date, date]] | None:
    """Claim a pending report (pending -> running) and return its slices; None if it is not pending."""
    claimed = (
        Report.objects.filter(pk=report_id, status=Status.PENDING).update(
            status=Status.RUNNING, task_id=task_id, progress=0, slices_done=0, started_at=timezone.now(), error=""
        )
        or Report.objects.filter(pk=report_id, status=Status.RUNNING, task_id=task_id).exists()
    )  # our redelivery
    if not claimed:
        logger.info("report %s is not pending; task %s leaves it alone", report_id, task_id)
        return None
    report = Report.objects.get(pk=report_id)
    parts = slices(report.period_start, report.period_end, settings.REPORT_SLICE_DAYS)
    Report.objects.filter(pk=report_id).update(slices_total=len(parts), progress=5)
    return parts


def generate_report(report_id: int, *, task_id: str) -> str:
    """Generate a pending report: inline for one slice, as a chord of slice tasks for more."""
    parts = start_generation(report_id, task_id=task_id)
    if parts is None:
        return "skipped"
    if len(parts) == 1:
        partial_figures = aggregate_slice(report_id, *parts[0])
        finish(report_id, [partial_figures])
        return "done"
    with fail_report_on_error(report_id):
        header = [
            dispatch.signature("reports.tasks.aggregate_report_slice", [report_id, first.isoformat(), last.isoformat()])
            for first, last in parts
        ]
        body = dispatch.signature("reports.tasks.finish_report", [report_id])
        if not dispatch.send_chord(header, body, about=f"report {report_id}'s chord of {len(parts)} slices"):
            mark_failed(report_id, "The broker was unavailable when the slices were sent; generate it again.")
            return "broker unavailable"
    return f"chord of {len(parts)} slices"


def generate_report_inline(report_id: int) -> Report:
    """Generate without any worker, slice after slice (manage.py generate_report --sync)."""
    parts = start_generation(report_id, task_id=f"sync-{secrets.token_hex(8)}")
    if parts is None:
        raise ReportRejected({"report": ["The report is being generated by a worker already."]})
    finish(report_id, [aggregate_slice(report_id, first, last) for first, last in parts])
    return Report.objects.get(pk=report_id)


@contextmanager
def fail_report_on_error(report_id: int) -> Iterator[None]:
    """Mark the report failed with the error, then let the error propagate to the task."""
    try:
        yield
    except Exception as exc:
        mark_failed(report_id, f"{type(exc).__name__}: {exc}")
        raise


def mark_failed(report_id: int, error: str) -> None:
    Report.objects.filter(pk=report_id).exclude(status=Status.DONE).update(
        status=Status.FAILED, error=error, finished_at=timezone.now()
    )
    logger.error("report %s failed: %s", report_id, error)


def aggregate_slice(report_id: int, start: date, end: date) -> dict:
    """Partial figures for one slice, as JSON: per day (orders, revenue) and per day and product (quantity, revenue)."""
    with fail_report_on_error(report_id):
        zone = ZoneInfo(settings.TIME_ZONE)
        lo, hi = _bounds(start, end)
        completed = Order.objects.filter(status=Order.Status.COMPLETED, created_at__gte=lo, created_at__lt=hi)
        days = list(
            completed.annotate(day=TruncDate("created_at", tzinfo=zone))
            .values("day")
            .annotate(orders=Count("pk"), revenue=Sum("total"), first_id=Min("pk"), last_id=Max("pk"))
            .order_by()
        )
        lines = OrderLine.objects.filter(
            order__status=Order.Status.COMPLETED, order__created_at__gte=lo, order__created_at__lt=hi
        )
        if days:
            # Order ids grow with time, so the slice's orders lie in a narrow id range:
            # bounding the lines by it lets PostgreSQL read the lines of this slice
            # through the order_id index instead of scanning every line of every
            # slice (a month in five slices read the whole table five times).
            lines = lines.filter(
                order_id__gte=min(row["first_id"] for row in days), order_id__lte=max(row["last_id"] for row in days)
            )
        lines = (
            lines.annotate(day=TruncDate("order__created_at", tzinfo=zone))
            .values("day", "product_id")
            .annotate(units=Sum("quantity"), revenue=Sum(F("unit_price") * F("quantity")))
            .order_by()
        )
        figures = {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "days": [[row["day"].isoformat(), row["orders"], str(row["revenue"])] for row in days],
            "lines": [[row["day"].isoformat(), row["product_id"], row["units"], str(row["revenue"])] for row in lines],
        }
        progress = Least(95, 5 + (F("slices_done") + 1) * 85 / F("slices_total"))
        Report.objects.filter(pk=report_id).update(slices_done=F("slices_done") + 1, progress=progress)
    return figures


@dataclass
class Figures:
    """Merged partial aggregates of a whole period."""

    days: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    lines: dict[tuple[str, int], tuple[int, Decimal]] = field(default_factory=dict)

    @classmethod
    def merge(cls, partials: list[dict]) -> Figures:
        merged = cls()
        for part in partials:
            for day, orders, revenue in part["days"]:
                before = merged.days.get(day, (0, Decimal(0)))
                merged.days[day] = (before[0] + orders, before[1] + Decimal(revenue))
            for day, product_id, quantity, revenue in part["lines"]:
                before = merged.lines.get((day, product_id), (0, Decimal(0)))
                merged.lines[(day, product_id)] = (before[0] + quantity, before[1] + Decimal(revenue))
        return merged

    def summary(self, products: dict[int, Product], start: date, end: date) -> dict:
        revenue = sum((revenue for _, revenue in self.days.values()), Decimal(0))
        count = sum(orders for orders, _ in self.days.values())
        per_product: dict[int, list] = defaultdict(lambda: [0, Decimal(0)])
        for (_, product_id), (quantity, line_revenue) in self.lines.items():
            per_product[product_id][0] += quantity
            per_product[product_id][1] += line_revenue
        ranked = sorted(per_product.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))[:TOP_PRODUCTS]
        return {
            "revenue": str(revenue.quantize(CENT)),
            "order_count": count,
            "average_order_value": str((revenue / count).quantize(CENT) if count else Decimal("0.00")),
            "top_products": [
                {
                    "sku": products[pk].sku,
                    "name": products[pk].name,
                    "quantity": quantity,
                    "revenue": str(amount.quantize(CENT)),
                }
                for pk, (quantity, amount) in ranked
            ],
            "currency": settings.SHOP_CURRENCY,
            "days": (end - start).days + 1,
            "definition": Report.REVENUE_DEFINITION.format(zone=settings.TIME_ZONE),
        }

    def daily_revenue(self, start: date, end: date) -> Iterator[tuple[date, Decimal]]:
        """Every day of the period with its revenue, zero where nothing was sold."""
        day = start
        while day <= end:
            yield day, self.days.get(day.isoformat(), (0, Decimal(0)))[1]
            day += timedelta(days=1)


def finish(report_id: int, partials: list[dict]) -> None:
    """Merge the partials, write the CSV and the chart, then mark the report done (the chord's callback)."""
    saved: list[str] = []
    with fail_report_on_error(report_id):
        try:
            report = Report.objects.get(pk=report_id)
            figures = Figures.merge(partials)
            product_ids = {product_id for _, product_id in figures.lines}
            products = Product.objects.in_bulk(product_ids)
            summary = figures.summary(products, report.period_start, report.period_end)
            Report.objects.filter(pk=report_id).update(progress=96)
            stem = f"reports/{report.kind}-{report.period_start}-{report.period_end}-{report.pk}-{secrets.token_hex(4)}"
            saved.append(_save_csv(f"{stem}.csv", figures, products))
            saved.append(_save_chart(f"{stem}.png", figures, report))
            _mark_done(report_id, saved[0], saved[1], summary)
        except Exception:
            for name in saved:  # never leave a half-finished set of files behind
                default_storage.delete(name)
            raise


def _save_csv(name: str, figures: Figures, products: dict[int, Product]) -> str:
    """Write rows to a temporary file one at a time, then hand the file to storage, which copies it in chunks."""
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["date", "sku", "product", "quantity", "revenue"])
        for (day, product_id), (quantity, revenue) in sorted(
            figures.lines.items(), key=lambda item: (item[0][0], products[item[0][1]].sku)
        ):
            product = products[product_id]
            writer.writerow([day, product.sku, product.name, quantity, revenue.quantize(CENT)])
        handle.seek(0)
        return default_storage.save(name, File(handle))


def _save_chart(name: str, figures: Figures, report: Report) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display in a worker
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    days, revenue = zip(*figures.daily_revenue(report.period_start, report.period_end), strict=True)
    figure, axes = plt.subplots(figsize=(9, 3.4), dpi=100)
    try:
        axes.bar(days, [float(value) for value in revenue], color="#2456c7", width=0.8)
        axes.set_title(f"Revenue per day, {report.period_start} to {report.period_end}")
        axes.set_ylabel(f"Revenue ({settings.SHOP_CURRENCY})")
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(mdates.AutoDateLocator()))
        axes.spines[["top", "right"]].set_visible(False)
        figure.tight_layout()
        with tempfile.TemporaryFile() as handle:
            figure.savefig(handle, format="png")
            handle.seek(0)
            return default_storage.save(name, File(handle))
    finally:
        plt.close(figure)


def _mark_done(report_id: int, csv_name: str, chart_name: str, summary: dict) -> None:
    with transaction.atomic():
        report = Report.objects.select_for_update().get(pk=report_id)
        old = [name for name in (report.csv_file.name, report.chart.name) if name]
        report.csv_file.name, report.chart.name = csv_name, chart_name
        report.summary = summary
        report.status, report.progress, report.error = Status.DONE, 100, ""
        report.finished_at = timezone.now()
        report.save(update_fields=["csv_file", "chart", "summary", "status", "progress", "error", "finished_at"])
        if report.requested_by_id:
            notification_services.notify_report_ready(report.pk)
        # Regenerating replaces the files: the old ones go once the new ones are committed.
        transaction.on_commit(lambda: [default_storage.delete(name) for name in old], robust=True)
    logger.info("report %s done: %s", report_id, csv_name)


def file_path(name: str) -> str:
    """Where a stored file is, for people (a path on local storage, otherwise its storage name)."""
    try:
        return str(Path(default_storage.path(name)))
    except NotImplementedError:
        return name


def report_json(report: Report) -> dict[str, object]:
    from django.urls import reverse

    done = report.status == Status.DONE
    return {
        "id": report.pk, "kind": report.kind, "period_start": report.period_start.isoformat(),
        "period_end": report.period_end.isoformat(), "status": report.status, "progress": report.progress,
        "summary": report.summary, "error": report.error,
        "csv_url": reverse("reports:download", args=[report.pk]) if done and report.csv_file else None,
        "chart_url": reverse("reports:chart", args=[report.pk]) if done and report.chart else None,
    }  # fmt: skip
