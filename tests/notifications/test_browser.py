"""Staff in a real browser: start a campaign in the admin and watch its progress bar fill."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from notifications.models import Campaign
from tests.notifications.helpers import make_customers
from tests.support.smtp import SmtpServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_staff_start_a_campaign_and_watch_it_finish_live(browser, live_server, start_worker_process, staff) -> None:
    make_customers(300)
    campaign = Campaign.objects.create(name="Spring", subject="Spring", body="Hello {{ first_name }}")
    staff.set_password("staff-pass-123")
    staff.save()
    with SmtpServer(delay=0.01) as server:
        start_worker_process(EMAIL_URL=server.url, EMAIL_RATE_LIMIT="off")
        page = browser.new_page()
        page.goto(f"{live_server.url}/admin/login/?next=/admin/notifications/campaign/{campaign.pk}/change/")
        page.fill("#id_username", staff.username)
        page.fill("#id_password", "staff-pass-123")
        page.click("input[type=submit]")

        page.click("text=Start sending")

        expect(page.locator(".messagelist")).to_contain_text("is being sent")
        sent = page.locator('[data-field="sent"]')
        expect(sent).not_to_have_text("0", timeout=20_000)  # the bar moves without a reload
        expect(page.locator('[data-field="status"]')).to_have_text("Done", timeout=60_000)
        expect(page.locator('[data-field="sent"]')).to_have_text("300")
        assert server.inbox.count() == 300
