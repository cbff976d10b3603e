"""A customer in a real browser: log in, place an order, watch it complete live, and cancel one."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from orders.models import Order
from tests.orders.helpers import ledger, product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def log_in(page, live_server, customer) -> None:
    customer.set_password("browser-pass-123")
    customer.save()
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", customer.username)
    page.fill("#id_password", "browser-pass-123")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/orders/")


def test_a_customer_places_an_order_and_watches_it_complete(
    browser, live_server, start_worker_process, customer
) -> None:
    start_worker_process()
    mug = product(stock=5, price="12.50")
    page = browser.new_page()
    log_in(page, live_server, customer)

    page.click("text=New order")
    page.fill(f"#id_qty_{mug.pk}", "2")
    page.click("text=Place order")

    expect(page).to_have_url(re.compile(r"/orders/\d+/$"))
    expect(page.locator('[data-field="status"]')).to_have_text("Completed", timeout=30_000)
    expect(page.locator('[data-field="step"]')).to_have_text("Customer notified")
    expect(page.locator('[data-field="tracking"]')).to_contain_text("Tracking number: SBX")
    expect(page.locator('[data-action="cancel"]')).to_be_hidden()
    order = Order.objects.get()
    assert len(ledger(order)) == 1


def test_a_customer_cancels_a_pending_order_from_its_page(browser, live_server, customer) -> None:
    mug = product(stock=5)
    page = browser.new_page()
    log_in(page, live_server, customer)
    page.goto(f"{live_server.url}/orders/new/")
    page.fill(f"#id_qty_{mug.pk}", "1")
    page.click("text=Place order")  # no worker runs: the order waits

    page.click("text=Cancel order")

    expect(page.locator('[data-field="status"]')).to_have_text("Cancelled")
    assert Order.objects.get().status == "cancelled"
