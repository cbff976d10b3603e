"""manage.py seed_demo, seed_orders and process_pending_orders."""

from __future__ import annotations

from datetime import date
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from orders.models import Order, Product
from tests.orders.helpers import place, product

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_seed_demo_creates_the_catalogue_and_a_customer_once(settings) -> None:
    first = run("seed_demo")
    Product.objects.filter(sku="MUG-001").update(stock=3)
    second = run("seed_demo")

    assert "Created customer 'demo' with password" in first
    assert "already exists" in second
    assert Product.objects.count() == 8
    assert Product.objects.get(sku="MUG-001").stock == 3  # staff changes survive a re-run
    demo = get_user_model().objects.get(username="demo")
    password = first.split("with password ")[1].split()[0]
    assert demo.check_password(password)


def test_seed_orders_spreads_orders_over_the_span_in_the_time_zone() -> None:
    run("seed_orders", "--count", "300", "--start", "2026-03-01", "--end", "2026-03-31", "--seed", "7")

    assert Order.objects.count() == 300
    zone = ZoneInfo(settings.TIME_ZONE)
    days = {order.created_at.astimezone(zone).date() for order in Order.objects.all()}
    assert min(days) >= date(2026, 3, 1) and max(days) <= date(2026, 3, 31)
    assert len(days) > 20
    for order in Order.objects.prefetch_related("lines")[:50]:
        assert 1 <= len(order.lines.all()) <= 3
        assert order.total == sum(line.unit_price * line.quantity for line in order.lines.all())
    assert Order.objects.filter(status="completed").count() > 200


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--end", "9999-12-31"], "cannot be in the future"),
        (["--start", "9999-01-01", "--end", "9999-12-31"], "cannot be in the future"),
        (["--start", "0001-01-01", "--end", "0001-01-05"], "1900-01-01"),
    ],
)
def test_seed_orders_refuses_dates_it_cannot_place_orders_on(arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("seed_orders", "--count", "3", *arguments, stdout=StringIO(), stderr=StringIO())
    assert not Order.objects.exists()


def test_seed_orders_rejects_bad_arguments_with_a_clear_error() -> None:
    with pytest.raises(CommandError, match="--start 2026-04-01 is after --end 2026-03-01"):
        call_command("seed_orders", "--count", "5", "--start", "2026-04-01", "--end", "2026-03-01")
    with pytest.raises(CommandError, match="not a date"):
        call_command("seed_orders", "--count", "5", "--start", "March")
    with pytest.raises(CommandError, match="at least 1"):
        call_command("seed_orders", "--count", "0")
    assert not Order.objects.exists()


def test_process_pending_orders_sync_processes_them_here(customer) -> None:
    mug = product(stock=10)
    orders = [place(customer, (mug, 1)) for _ in range(3)]

    out = run("process_pending_orders", "--sync")

    assert "Processed 3 order(s): 3 completed." in out
    assert {order.status for order in Order.objects.filter(pk__in=[o.pk for o in orders])} == {"completed"}
    assert Product.objects.get(pk=mug.pk).stock == 7


def test_process_pending_orders_sends_them_to_the_broker(customer, broker, django_capture_on_commit_callbacks) -> None:
    place(customer, (product(), 1))
    place(customer, (product(), 1))

    with django_capture_on_commit_callbacks(execute=True):
        out = run("process_pending_orders")

    assert "Sent 2 order(s) to the workers." in out
    assert broker.llen("default") == 2


def test_process_pending_orders_says_when_there_is_nothing_to_do() -> None:
    assert "No pending orders." in run("process_pending_orders")


def test_every_orders_command_has_help() -> None:
    for name in ("seed_demo", "seed_orders", "process_pending_orders"):
        with pytest.raises(SystemExit) as exit_info:
            call_command(name, "--help", stdout=StringIO())
        assert exit_info.value.code == 0
