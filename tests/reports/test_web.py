"""Report pages, the JSON endpoint and downloads: staff only, with clear errors for bad input."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from reports.models import Report
from reports.services import generation, requesting
from tests.reports.helpers import Sale, make_sales

pytestmark = pytest.mark.django_db


@pytest.fixture
def done_report(settings) -> Report:
    make_sales([Sale(datetime(2025, 6, 3, 12, tzinfo=ZoneInfo("UTC")), "completed", (("MUG", 2, 10),))])
    report = requesting.request_report(kind="custom", start=date(2025, 6, 1), end=date(2025, 6, 30), enqueue=False)
    return generation.generate_report_inline(report.pk)


def test_staff_see_the_list_the_page_the_json_and_download_the_files(admin_client, done_report) -> None:
    assert str(done_report) in admin_client.get("/reports/").content.decode()
    page = admin_client.get(f"/reports/{done_report.pk}/").content.decode()
    assert "€20.00" in page and f"/reports/{done_report.pk}/chart.png" in page

    body = admin_client.get(f"/api/reports/{done_report.pk}/").json()
    assert set(body) == {
        "id",
        "kind",
        "period_start",
        "period_end",
        "status",
        "progress",
        "summary",
        "error",
        "csv_url",
        "chart_url",
    }
    assert (body["status"], body["progress"], body["summary"]["revenue"]) == ("done", 100, "20.00")
    assert body["csv_url"] == f"/reports/{done_report.pk}/download/"

    download = admin_client.get(body["csv_url"])
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith("attachment;")
    assert b"".join(download.streaming_content).startswith(b"date,sku,product,quantity,revenue")
    chart = admin_client.get(body["chart_url"])
    assert chart["Content-Type"] == "image/png" and b"".join(chart.streaming_content)[:4] == b"\x89PNG"


def test_amounts_and_counts_are_shown_for_people_while_the_csv_and_json_stay_plain(admin_client, settings) -> None:
    make_sales(
        [Sale(datetime(2025, 6, 3, 12, tzinfo=ZoneInfo("UTC")), "completed", (("SAFE", 1500, Decimal("1021.24")),))]
    )
    report = requesting.request_report(kind="custom", start=date(2025, 6, 1), end=date(2025, 6, 30), enqueue=False)
    report = generation.generate_report_inline(report.pk)

    page = admin_client.get(f"/reports/{report.pk}/").content.decode()
    assert "€1,531,860.00" in page and ">1,500<" in page
    assert "€1,531,860.00" in admin_client.get("/reports/").content.decode()
    assert admin_client.get(f"/api/reports/{report.pk}/").json()["summary"]["revenue"] == "1531860.00"
    csv = b"".join(admin_client.get(f"/reports/{report.pk}/download/").streaming_content).decode()
    assert ",1500,1531860.00" in csv

    settings.SHOP_LOCALE = "nl_NL"
    assert "€\xa01.531.860,00" in admin_client.get(f"/reports/{report.pk}/").content.decode()


def test_the_files_are_not_public_media(admin_client, done_report) -> None:
    assert Client().get(f"/media/{done_report.csv_file.name}").status_code == 404
    assert admin_client.get(f"/media/{done_report.csv_file.name}").status_code == 404


@pytest.mark.parametrize(
    "path", ["/reports/", "/reports/new/", "/reports/{id}/", "/reports/{id}/download/", "/reports/{id}/chart.png"]
)
def test_customers_get_403_and_visitors_are_sent_to_log_in(customer_client, done_report, path: str) -> None:
    url = path.format(id=done_report.pk)
    assert customer_client.get(url).status_code == 403
    visitor = Client().get(url)
    assert visitor.status_code == 302 and visitor["Location"].startswith("/accounts/login/")


def test_the_json_endpoints_refuse_customers_and_visitors_as_json(customer_client, done_report) -> None:
    for client, status in ((customer_client, 403), (Client(), 401)):
        assert client.get(f"/api/reports/{done_report.pk}/").status_code == status
        response = client.post(
            "/api/reports/", {"start": "2025-01-01", "end": "2025-01-02"}, content_type="application/json"
        )
        assert response.status_code == status
        assert "error" in response.json()
    assert Report.objects.count() == 1


BAD_RANGES = [
    pytest.param({"start": "2025-05-10", "end": "2025-05-01"}, "end", "before the start", id="end before start"),
    pytest.param({"start": "2024-01-01", "end": "2025-06-01"}, "end", "at most 366 days", id="too long"),
    pytest.param({"start": "2099-01-01", "end": "2099-01-05"}, "start", "in the future", id="start in the future"),
    pytest.param({"start": "2025-02-30", "end": "2025-03-01"}, "start", "valid date", id="malformed date"),
    pytest.param({"start": "yesterday", "end": "2025-03-01"}, "start", "valid date", id="not a date"),
    pytest.param({"end": "2025-03-01"}, "start", "required", id="missing start"),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD_RANGES)
def test_the_form_rejects_bad_ranges_with_a_clear_error_and_creates_nothing(
    admin_client, data: dict, field: str, message: str
) -> None:
    response = admin_client.post("/reports/new/", data)
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert not Report.objects.exists()


@pytest.mark.parametrize(("data", "field", "message"), BAD_RANGES)
def test_the_json_endpoint_rejects_bad_ranges_with_field_errors_and_creates_nothing(
    admin_client, data: dict, field: str, message: str
) -> None:
    response = admin_client.post("/api/reports/", json.dumps(data), content_type="application/json")
    assert response.status_code == 400
    assert message in " ".join(response.json()["errors"][field])
    assert not Report.objects.exists()


def test_the_json_endpoint_accepts_a_good_range(admin_client, admin_user) -> None:
    response = admin_client.post(
        "/api/reports/", {"start": "2025-05-01", "end": "2025-05-31"}, content_type="application/json"
    )
    assert response.status_code == 202
    report = Report.objects.get()
    assert response["Location"] == f"/api/reports/{report.pk}/"
    assert (report.kind, report.requested_by, report.status) == ("custom", admin_user, "pending")


def test_the_admin_lists_reports_with_thumbnail_and_download_and_regenerates(admin_client, done_report, broker) -> None:
    page = admin_client.get("/admin/reports/report/?status__exact=done").content.decode()
    assert f'src="/reports/{done_report.pk}/chart.png"' in page
    assert f'href="/reports/{done_report.pk}/download/"' in page

    response = admin_client.post(
        "/admin/reports/report/", {"action": "regenerate", "_selected_action": [done_report.pk]}, follow=True
    )
    assert "Regenerating 1 report(s)" in response.content.decode()
    done_report.refresh_from_db()
    assert done_report.status == "pending"


def test_generate_report_sync_prints_where_the_files_are(settings) -> None:
    make_sales([Sale(datetime(2025, 6, 3, 12, tzinfo=ZoneInfo("UTC")), "completed", (("MUG", 2, 10),))])
    out = StringIO()
    call_command("generate_report", "monthly", "--date", "2025-06-15", "--sync", stdout=out)
    text = out.getvalue()
    assert "Monthly report 2025-06-01 to 2025-06-30 is done: revenue 20.00." in text
    report = Report.objects.get()
    assert f"CSV:   {settings.MEDIA_ROOT}" in text and report.csv_file.name in text


def test_generate_report_enqueues_and_says_where_to_follow_it(broker) -> None:
    out = StringIO()
    call_command("generate_report", "custom", "--start", "2025-06-01", "--end", "2025-06-02", stdout=out)
    report = Report.objects.get()
    assert f"/reports/{report.pk}/" in out.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["custom"], "takes --start and --end"),
        (["custom", "--start", "2025-06-01"], "takes --start and --end"),
        (["daily", "--start", "2025-06-01", "--end", "2025-06-02"], "takes --date"),
        (["daily", "--date", "June"], "is not a date"),
        (["custom", "--start", "2025-06-10", "--end", "2025-06-01"], "before the start"),
        (["custom", "--start", "2099-06-01", "--end", "2099-06-02"], "in the future"),
        (["monthly", "--date", "9999-12-05"], "Reports cover"),
        (["daily", "--date", "9999-12-31"], "Reports cover"),
        (["custom", "--start", "0001-01-01", "--end", "0001-01-05"], "Reports cover"),
    ],
)
def test_generate_report_rejects_bad_arguments(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("generate_report", *args, stdout=StringIO())
    assert not Report.objects.exists()


def test_the_page_of_a_report_not_made_yet_shows_its_progress(admin_client) -> None:
    report = requesting.request_report(kind="custom", start=date(2025, 6, 1), end=date(2025, 6, 30), enqueue=False)

    response = admin_client.get(f"/reports/{report.pk}/")

    assert response.status_code == 200
    assert 'data-status="pending"' in response.content.decode()
