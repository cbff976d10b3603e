"""Placing an order: validate the request, save the order with its lines, and send it to the pipeline."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from core import dispatch
from core.db import fetch_rows, instance_from_row
from core.errors import FieldErrors
from orders import sql
from orders.models import Order, OrderLine, Product

logger = logging.getLogger(__name__)


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused for a different request."""


@dataclass(frozen=True)
class LineRequest:
    sku: str
    quantity: int


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    created: bool


def place_order(*, customer_id: int, lines: Sequence[LineRequest], idempotency_key: str | None = None) -> PlacedOrder:
    """Validate and save an order with its lines in one statement; enqueue processing after the commit."""
    if not _well_formed(lines):
        validate_lines(lines)  # raises, with a message for every line that is wrong
    fingerprint = hashlib.sha256(repr(sorted((line.sku, line.quantity) for line in lines)).encode()).hexdigest()
    if idempotency_key:
        existing = order_for_key(customer_id, idempotency_key, fingerprint)
        if existing is not None:
            return PlacedOrder(existing, created=False)
    order = Order(customer_id=customer_id, idempotency_key=idempotency_key or None, request_fingerprint=fingerprint)
    # Inside a caller's transaction the insert gets a savepoint, so a lost
    # idempotency race below leaves that transaction usable.
    try:
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            saved = _insert_order(order, lines)
            if not saved:
                # A SKU is unknown or short of stock; nothing was written. Look
                # the products up to say which, then try once more in case the
                # stock came back in between.
                validate_lines(lines)
                saved = _insert_order(order, lines)
    except IntegrityError:
        # Two requests with the same key raced; the other one's order is the answer.
        existing = order_for_key(customer_id, idempotency_key, fingerprint) if idempotency_key else None
        if existing is None:
            raise
        return PlacedOrder(existing, created=False)
    if not saved:
        raise FieldErrors({"lines": ["The catalogue changed while the order was placed; please try again."]})
    # After the commit (at once outside a transaction); never a 500 after the order was saved.
    dispatch.send_on_commit("orders.tasks.process_order", [order.pk])
    logger.info("order %s placed by customer %s, total %s", order.pk, customer_id, order.total)
    return PlacedOrder(order, created=True)


def _insert_order(order: Order, lines: Sequence[LineRequest]) -> list[OrderLine]:
    """Check the lines against the catalogue and save the order with them (orders.sql.INSERT_ORDER); [] if one failed.

    Nothing is written unless every line names a product with enough stock.
    """
    if not sql.in_one_statement():
        return _create_order(order, lines)
    order.updated_at = order.created_at
    rows = fetch_rows(
        sql.INSERT_ORDER,
        {
            "skus": [line.sku for line in lines],
            "quantities": [line.quantity for line in lines],
            "line_count": len(lines),
            "customer_id": order.customer_id,
            "now": order.created_at,
            "idempotency_key": order.idempotency_key,
            "request_fingerprint": order.request_fingerprint,
        },
    )
    if not rows:
        return []
    order_lines = [instance_from_row(OrderLine, row) for row in rows]
    # The statement saved the order with the model's defaults, as `order` holds them.
    order.pk = rows[0]["order_id"]
    order.total = sum((line.unit_price * line.quantity for line in order_lines), Decimal("0.00"))
    order._state.adding, order._state.db = False, connection.alias
    return order_lines


def _create_order(order: Order, lines: Sequence[LineRequest]) -> list[OrderLine]:
    """_insert_order with the ORM, for SQLite (no data-modifying CTEs); raises FieldErrors for a wrong line."""
    products = validate_lines(lines)
    order.total = sum((products[line.sku].price * line.quantity for line in lines), Decimal("0.00"))
    order_lines = [
        OrderLine(order=order, product=products[line.sku], quantity=line.quantity, unit_price=products[line.sku].price)
        for line in lines
    ]
    with transaction.atomic():
        order.save(force_insert=True)
        OrderLine.objects.bulk_create(order_lines)
    return order_lines


def _well_formed(lines: Sequence[LineRequest]) -> bool:
    """The checks of validate_lines that need no products: line count, quantities, no SKU twice."""
    return (
        0 < len(lines) <= settings.ORDER_MAX_LINES
        and len({line.sku for line in lines}) == len(lines)
        and all(1 <= line.quantity <= settings.ORDER_MAX_QUANTITY for line in lines)
    )


def validate_lines(lines: Sequence[LineRequest]) -> dict[str, Product]:
    """Raise FieldErrors with a message per wrong field; the products by SKU when all is well."""
    errors: dict[str, list[str]] = {}
    if not lines:
        raise FieldErrors({"lines": ["An order needs at least one line."]})
    if len(lines) > settings.ORDER_MAX_LINES:
        raise FieldErrors({"lines": [f"An order can have at most {settings.ORDER_MAX_LINES} lines."]})
    products = {p.sku: p for p in Product.objects.filter(sku__in={line.sku for line in lines})}
    seen: set[str] = set()
    for index, line in enumerate(lines):
        product = products.get(line.sku)
        if product is None:
            errors[f"lines.{index}.sku"] = [f"Unknown SKU {line.sku!r}."]
        elif line.sku in seen:
            errors[f"lines.{index}.sku"] = [f"SKU {line.sku!r} appears on more than one line."]
        if line.quantity < 1:
            errors[f"lines.{index}.quantity"] = ["Quantity must be at least 1."]
        elif line.quantity > settings.ORDER_MAX_QUANTITY:
            errors[f"lines.{index}.quantity"] = [f"Quantity can be at most {settings.ORDER_MAX_QUANTITY}."]
        elif product is not None and line.quantity > product.stock:
            errors[f"lines.{index}.quantity"] = [f"Only {product.stock} of {line.sku} in stock."]
        seen.add(line.sku)
    if errors:
        raise FieldErrors(errors)
    return products


def order_for_key(customer_id: int, key: str, fingerprint: str) -> Order | None:
    order = Order.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if order is not None and order.request_fingerprint != fingerprint:
        raise IdempotencyConflict("This Idempotency-Key was already used for a different order.")
    return order
