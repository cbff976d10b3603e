"""Report figures against an independent calculation, across day and month edges in a non-UTC time zone."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from core.errors import FieldErrors
from reports.models import Report
from reports.services import generation, periods, requesting
from tests.reports.helpers import Sale, expected_figures, make_sales

# Service tests: bin/test runs them on PostgreSQL and again on SQLite, the embedded default.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded_db]

ZONE = "Pacific/Auckland"  # UTC+13 in October and November: local days differ from UTC days
NZ = ZoneInfo(ZONE)
UTC = ZoneInfo("UTC")
D = Decimal

SALES = [
    # 31 Oct 23:30 in Auckland is 31 Oct 10:30 UTC: October locally.
    Sale(datetime(2025, 10, 31, 23, 30, tzinfo=NZ), "completed", (("MUG", 2, D("12.50")),)),
    # 1 Nov 00:30 in Auckland is still 31 Oct in UTC: November locally.
    Sale(datetime(2025, 11, 1, 0, 30, tzinfo=NZ), "completed", (("MUG", 1, D("12.50")), ("TEE", 1, D("24.00")))),
    # 1 Nov 12:30 UTC is 2 Nov 01:30 in Auckland.
    Sale(datetime(2025, 11, 1, 12, 30, tzinfo=UTC), "completed", (("CAP", 3, D("18.00")),)),
    Sale(datetime(2025, 11, 15, 9, 0, tzinfo=NZ), "completed", (("TEE", 2, D("24.00")), ("PEN", 1, D("32.00")))),
    Sale(datetime(2025, 11, 30, 23, 59, tzinfo=NZ), "completed", (("BAG", 4, D("15.00")),)),
    # 1 Dec 00:01 in Auckland: December.
    Sale(datetime(2025, 12, 1, 0, 1, tzinfo=NZ), "completed", (("MUG", 9, D("12.50")),)),
    # Not revenue: failed, cancelled and unfinished orders.
    Sale(datetime(2025, 11, 10, 12, 0, tzinfo=NZ), "failed", (("PEN", 5, D("32.00")),)),
    Sale(datetime(2025, 11, 11, 12, 0, tzinfo=NZ), "cancelled", (("PEN", 5, D("32.00")),)),
    Sale(datetime(2025, 11, 12, 12, 0, tzinfo=NZ), "pending", (("PEN", 5, D("32.00")),)),
    Sale(datetime(2025, 11, 13, 12, 0, tzinfo=NZ), "processing", (("PEN", 5, D("32.00")),)),
]


@pytest.fixture(autouse=True)
def _auckland(settings) -> None:
    settings.TIME_ZONE = ZONE


def run(kind: str, start: date, end: date, slice_days: int, settings) -> Report:
    settings.REPORT_SLICE_DAYS = slice_days
    report = requesting.request_report(kind=kind, start=start, end=end, enqueue=False)
    return generation.generate_report_inline(report.pk)


@pytest.mark.parametrize(
    ("kind", "start", "end"),
    [
        ("monthly", date(2025, 11, 1), date(2025, 11, 30)),
        ("monthly", date(2025, 10, 1), date(2025, 10, 31)),
        ("daily", date(2025, 11, 1), date(2025, 11, 1)),
        ("daily", date(2025, 11, 2), date(2025, 11, 2)),
        ("weekly", date(2025, 10, 27), date(2025, 11, 2)),
        ("custom", date(2025, 10, 31), date(2025, 12, 1)),
    ],
)
def test_the_figures_match_an_independent_calculation(kind: str, start: date, end: date, settings) -> None:
    make_sales(SALES)
    want = expected_figures(SALES, start, end, ZONE)

    report = run(kind, start, end, slice_days=7, settings=settings)

    summary = report.summary
    assert report.status == "done" and report.progress == 100
    assert (summary["revenue"], summary["order_count"], summary["average_order_value"]) == (
        want["revenue"],
        want["order_count"],
        want["average_order_value"],
    )
    got_top = [(p["sku"], p["quantity"], p["revenue"]) for p in summary["top_products"]]
    assert got_top == want["top_products"]
    assert "completed orders only" in summary["definition"] and ZONE in summary["definition"]


def test_november_in_auckland_holds_exactly_the_four_local_november_orders(settings) -> None:
    make_sales(SALES)
    report = run("monthly", date(2025, 11, 1), date(2025, 11, 30), slice_days=7, settings=settings)
    # 12.50+24.00, 54.00, 48.00+32.00, 60.00
    assert (report.summary["order_count"], report.summary["revenue"]) == (4, "230.50")


def test_a_chord_of_many_slices_gives_the_same_result_as_one_slice(settings) -> None:
    make_sales(SALES)
    one = run("custom", date(2025, 10, 31), date(2025, 12, 1), slice_days=60, settings=settings)
    many = run("custom", date(2025, 10, 31), date(2025, 12, 1), slice_days=1, settings=settings)

    assert (one.slices_total, many.slices_total) == (1, 32)
    assert one.summary == many.summary
    assert default_storage.open(one.csv_file.name).read() == default_storage.open(many.csv_file.name).read()


def test_the_csv_and_chart_exist_and_parse(settings) -> None:
    make_sales(SALES)
    want = expected_figures(SALES, date(2025, 11, 1), date(2025, 11, 30), ZONE)

    report = run("monthly", date(2025, 11, 1), date(2025, 11, 30), slice_days=7, settings=settings)

    rows = list(csv.DictReader(io.StringIO(default_storage.open(report.csv_file.name).read().decode())))
    assert list(rows[0]) == ["date", "sku", "product", "quantity", "revenue"]
    per_day: dict[str, Decimal] = {}
    for row in rows:
        per_day[row["date"]] = per_day.get(row["date"], Decimal(0)) + Decimal(row["revenue"])
    assert {day: f"{amount:.2f}" for day, amount in per_day.items()} == want["per_day"]
    with default_storage.open(report.chart.name) as handle:
        image = Image.open(handle)
        image.verify()
        assert image.format == "PNG" and image.size[0] > 400


def test_regenerating_a_period_replaces_the_report_and_its_files(settings, django_capture_on_commit_callbacks) -> None:
    make_sales(SALES)
    first = run("monthly", date(2025, 11, 1), date(2025, 11, 30), slice_days=7, settings=settings)
    old_files = (first.csv_file.name, first.chart.name)

    again = requesting.request_report(kind="monthly", start=date(2025, 11, 1), end=date(2025, 11, 30), enqueue=False)
    assert (again.pk, again.status) == (first.pk, "done")  # asking again is idempotent

    with django_capture_on_commit_callbacks(execute=True):
        Report.objects.filter(pk=first.pk).update(status="failed")  # regenerate without a worker: not enqueued
        requesting.request_report(kind="monthly", start=date(2025, 11, 1), end=date(2025, 11, 30), enqueue=False)
        second = generation.generate_report_inline(first.pk)

    assert Report.objects.filter(kind="monthly").count() == 1
    assert second.summary == first.summary
    assert (second.csv_file.name, second.chart.name) != old_files
    assert not any(default_storage.exists(name) for name in old_files)


def test_a_report_that_cannot_be_written_fails_with_the_error_and_no_file(settings, tmp_path) -> None:
    make_sales(SALES)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings.MEDIA_ROOT = str(blocker / "media")  # no directory can be made under a file, not even by root

    report = requesting.request_report(kind="monthly", start=date(2025, 11, 1), end=date(2025, 11, 30), enqueue=False)
    with pytest.raises(OSError):
        generation.generate_report_inline(report.pk)

    report.refresh_from_db()
    assert report.status == "failed"
    assert "Errno" in report.error
    assert not report.csv_file and not report.chart


@pytest.mark.parametrize(
    ("start", "end", "field", "message"),
    [
        (date(2026, 11, 10), date(2025, 11, 1), "end", "before the start"),
        (date(2024, 1, 1), date(2026, 1, 1), "end", "at most 366 days"),
        (date(2099, 1, 1), date(2099, 1, 2), "start", "in the future"),
    ],
)
def test_bad_periods_are_rejected_with_the_reason_and_nothing_is_saved(
    start: date, end: date, field: str, message: str
) -> None:
    with pytest.raises(FieldErrors) as rejected:
        requesting.request_report(kind="custom", start=start, end=end)
    assert message in " ".join(rejected.value.errors[field])
    assert not Report.objects.exists()


def test_the_scheduled_reports_cover_the_previous_day_iso_week_and_month() -> None:
    today = date(2026, 11, 2)  # a Monday
    assert periods.previous_period("daily", today) == (date(2026, 11, 1), date(2026, 11, 1))
    assert periods.previous_period("weekly", today) == (date(2026, 10, 26), date(2026, 11, 1))
    assert periods.previous_period("monthly", today) == (date(2026, 10, 1), date(2026, 10, 31))
    assert periods.previous_period("monthly", date(2026, 3, 1)) == (date(2026, 2, 1), date(2026, 2, 28))


def test_a_scheduled_report_is_idempotent_for_its_period(django_capture_on_commit_callbacks, broker) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        first = requesting.schedule_report("daily", today=date(2026, 11, 2))
        second = requesting.schedule_report("daily", today=date(2026, 11, 2))
    assert first.pk == second.pk
    assert Report.objects.count() == 1
    assert broker.llen("low_priority") == 1  # sent once


def test_a_finished_report_tells_the_staff_member_who_asked(settings, staff) -> None:
    from notifications.models import Notification

    make_sales(SALES)
    settings.REPORT_SLICE_DAYS = 7
    report = requesting.request_report(
        kind="custom", start=date(2025, 11, 1), end=date(2025, 11, 30), requested_by_id=staff.pk, enqueue=False
    )
    generation.generate_report_inline(report.pk)

    notification = Notification.objects.get(kind="report_ready")
    assert notification.recipient == staff.email
    assert f"/reports/{report.pk}/" in notification.body_text
    assert "230.50" in notification.body_text
