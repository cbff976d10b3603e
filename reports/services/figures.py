"""A slice's figures, aggregated in PostgreSQL, and the merge of every slice's figures into a report's.

Each slice is a pair of GROUP BY queries (per day, and per day and product),
never a loop over orders; the partial figures are plain JSON, stored on the
slice's row, and Figures merges them for the CSV, the chart and the summary.
Revenue counts completed orders only, by the date they were placed in TIME_ZONE.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Count, F, Max, Min, Sum
from django.db.models.functions import TruncDate

from core.dates import day_bounds
from orders.services import history
from reports.models import Report
from reports.services.files import CENT

TOP_PRODUCTS = 5


def aggregate_figures(start: date, end: date, checkpoint: Callable[[], None] = lambda: None) -> dict:
    """Partial figures for one slice, as JSON: per day (orders, revenue) and per day and product (quantity, revenue)."""
    zone = ZoneInfo(settings.TIME_ZONE)
    lo, hi = day_bounds(start, end)
    checkpoint()
    completed = history.completed_orders_between(lo, hi)
    days = list(
        completed.annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day")
        .annotate(orders=Count("pk"), revenue=Sum("total"), first_id=Min("pk"), last_id=Max("pk"))
        .order_by()
    )
    checkpoint()
    lines = history.completed_lines_between(lo, hi)
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
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days": [[row["day"].isoformat(), row["orders"], str(row["revenue"])] for row in days],
        "lines": [[row["day"].isoformat(), row["product_id"], row["units"], str(row["revenue"])] for row in lines],
    }


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

    def summary(self, products: dict[int, Any], start: date, end: date) -> dict:
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
