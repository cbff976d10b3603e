"""Known sales data for report tests, and an independent way to total it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from orders.models import Order, OrderLine, Product
from tests.factories import ProductFactory, UserFactory


@dataclass(frozen=True)
class Sale:
    at: datetime  # aware
    status: str
    lines: tuple[tuple[str, int, Decimal], ...]  # sku, quantity, unit price


def make_sales(sales: list[Sale]) -> None:
    """Write the sales as orders directly (they are history, not work for the pipeline)."""
    customer = UserFactory()
    products: dict[str, Product] = {}
    for sale in sales:
        for sku, _, price in sale.lines:
            if sku not in products:
                products[sku] = ProductFactory(sku=sku, name=f"Product {sku}", price=price)
        total = sum((price * quantity for _, quantity, price in sale.lines), Decimal(0))
        order = Order.objects.create(customer=customer, status=sale.status, total=total, created_at=sale.at)
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product=products[sku], quantity=quantity, unit_price=price)
            for sku, quantity, price in sale.lines
        )


def expected_figures(sales: list[Sale], start: date, end: date, zone: str) -> dict:
    """What the report must say, computed in plain Python from the test's own data."""
    tz = ZoneInfo(zone)
    counted = [s for s in sales if s.status == "completed" and start <= s.at.astimezone(tz).date() <= end]
    revenue = sum((price * quantity for s in counted for _, quantity, price in s.lines), Decimal(0))
    per_product: dict[str, list] = defaultdict(lambda: [0, Decimal(0)])
    per_day: dict[str, Decimal] = defaultdict(Decimal)
    for sale in counted:
        for sku, quantity, price in sale.lines:
            per_product[sku][0] += quantity
            per_product[sku][1] += price * quantity
            per_day[sale.at.astimezone(tz).date().isoformat()] += price * quantity
    ranked = sorted(per_product.items(), key=lambda item: -item[1][1])[:5]
    return {
        "revenue": f"{revenue:.2f}",
        "order_count": len(counted),
        "average_order_value": f"{(revenue / len(counted)) if counted else Decimal(0):.2f}",
        "top_products": [(sku, quantity, f"{amount:.2f}") for sku, (quantity, amount) in ranked],
        "per_day": {day: f"{amount:.2f}" for day, amount in per_day.items()},
    }
