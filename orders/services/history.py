"""Orders as history, for the other apps: who ordered when (campaign audiences, the digest, sales reports)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from orders.models import Order, OrderLine, Product


def orders_placed_between(start: datetime, end: datetime) -> QuerySet[Order]:
    """Orders placed in [start, end), whatever their status, with their customer."""
    return Order.objects.filter(created_at__gte=start, created_at__lt=end).select_related("customer")


def customers_who_ordered_since(moment: datetime) -> QuerySet[Order]:
    """The ids of customers who placed an order at `moment` or later (a subquery: `pk__in=`)."""
    return Order.objects.filter(created_at__gte=moment).values("customer_id")


def completed_orders_between(start: datetime, end: datetime) -> QuerySet[Order]:
    """Completed orders placed in [start, end): what sales reports count."""
    return Order.objects.filter(status=Order.Status.COMPLETED, created_at__gte=start, created_at__lt=end)


def completed_lines_between(start: datetime, end: datetime) -> QuerySet[OrderLine]:
    """The lines of completed_orders_between(start, end)."""
    return OrderLine.objects.filter(
        order__status=Order.Status.COMPLETED, order__created_at__gte=start, order__created_at__lt=end
    )


def products_by_id(ids: set[int]) -> dict[int, Product]:
    return Product.objects.in_bulk(ids)
