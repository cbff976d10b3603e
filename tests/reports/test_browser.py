"""Staff in a real browser: ask for a custom report and watch it finish, chart and CSV included."""

from __future__ import annotations

from datetime import date

import pytest
from playwright.sync_api import expect

from orders.seeding import seed_orders

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_staff_request_a_report_and_see_the_chart_and_figures_appear(
    browser, live_server, start_worker_process, staff
) -> None:
    seed_orders(count=3000, start=date(2025, 4, 1), end=date(2025, 4, 30), customers=20, seed=3)
    start_worker_process(REPORT_SLICE_DAYS="5")
    staff.set_password("staff-pass-123")
    staff.save()
    page = browser.new_page()
    page.goto(f"{live_server.url}/accounts/login/?next=/reports/new/")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", "staff-pass-123")
    page.click("button[type=submit]")

    page.fill("#id_start", "2025-04-01")
    page.fill("#id_end", "2025-04-30")
    page.click("text=Generate")

    expect(page.locator('[data-field="status"]')).to_have_text("Done", timeout=60_000)
    expect(page.locator('[data-field="percent"]')).to_have_text("100%")
    expect(page.locator('[data-field="result"]')).to_be_visible()
    expect(page.locator('[data-field="revenue"]')).to_contain_text("€")
    chart = page.locator('[data-field="chart"]')
    expect(chart).to_be_visible()
    page.wait_for_function("document.querySelector('[data-field=chart]').naturalWidth > 400")
    with page.expect_download() as download:
        page.click("text=Download the CSV")
    assert download.value.suggested_filename == "custom-report-2025-04-01-2025-04-30.csv"
