"""Placing an order: validate the request, save the order with its lines, and send it to the pipeline."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Field

from core import dispatch
from ops import inserts
from orders.models import Order, OrderLine, Product

logger = logging.getLogger(__name__)


class OrderRejected(Exception):
    """The order request is invalid; `errors` maps field paths to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


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
        raise OrderRejected({"lines": ["The catalogue changed while the order was placed; please try again."]})
    # After the commit (at once outside a transaction); never a 500 after the order was saved.
    dispatch.send_on_commit("orders.tasks.process_order", [order.pk])
    logger.info("order %s placed by customer %s, total %s", order.pk, customer_id, order.total)
    return PlacedOrder(order, created=True)


def _insert_order(order: Order, lines: Sequence[LineRequest]) -> list[OrderLine]:
    """Check the lines against the catalogue and save the order with them, in one statement; [] if a line failed.

    Placing an order is the hot path of POST /api/orders/. Done the usual way it
    is a SELECT of the products, then BEGIN, INSERT order, INSERT lines, COMMIT.
    Here a data-modifying CTE (see ops.inserts) joins the requested lines to the
    products with enough stock, prices them, and inserts the order and its lines
    only when every line matched. One statement is atomic by itself (outside a
    transaction it needs no BEGIN or COMMIT), so this is one round trip. The
    stock is read, not reserved: the pipeline reserves it.
    """
    if not inserts.single_statements():
        return _create_order(order, lines)
    sql, order_fields = _insert_order_sql(len(lines))
    params: list[object] = []
    for position, line in enumerate(lines):
        params += [position, line.sku, line.quantity]
    params += inserts.values_of(order, order_fields)
    params.append(len(lines))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return []
    order_lines = []
    for line_id, order_id, product_id, quantity, unit_price in rows:
        line = OrderLine(order_id=order_id, product_id=product_id, quantity=quantity, unit_price=unit_price)
        inserts.mark_saved(line, line_id)
        order_lines.append(line)
    order.total = sum((line.unit_price * line.quantity for line in order_lines), Decimal("0.00"))
    inserts.mark_saved(order, rows[0][1])
    return order_lines


def _create_order(order: Order, lines: Sequence[LineRequest]) -> list[OrderLine]:
    """_insert_order with the ORM, for databases without data-modifying CTEs (SQLite): raises OrderRejected."""
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


@functools.cache
def _insert_order_sql(line_count: int) -> tuple[str, list[Field]]:
    """The statement of _insert_order for this many lines, and the order fields its parameters fill."""
    quote = connection.ops.quote_name
    product = {name: quote(Product._meta.get_field(name).column) for name in ("sku", "stock", "price")}
    order_fields = inserts.fields_of(Order, without=("total",))
    line_columns = [quote(OrderLine._meta.get_field(name).column) for name in ("order", "product", "quantity")]
    line_columns.append(quote(OrderLine._meta.get_field("unit_price").column))
    values = ", ".join(["(%s::integer, %s, %s::integer)"] * line_count)
    sql = (
        f"WITH wanted (position, sku, quantity) AS (VALUES {values}), "  # noqa: S608
        f"priced AS (SELECT wanted.position, product.{quote(Product._meta.pk.column)} AS product_id, "
        f"wanted.quantity, product.{product['price']} AS price "
        f"FROM wanted JOIN {quote(Product._meta.db_table)} product ON product.{product['sku']} = wanted.sku "
        f"AND product.{product['stock']} >= wanted.quantity), "
        f"new_order AS (INSERT INTO {quote(Order._meta.db_table)} "
        f"({inserts.columns(order_fields)}, {quote(Order._meta.get_field('total').column)}) "
        f"SELECT {inserts.placeholders(len(order_fields))}, (SELECT sum(price * quantity) FROM priced) "
        f"WHERE (SELECT count(*) FROM priced) = %s RETURNING {quote(Order._meta.pk.column)}) "
        f"INSERT INTO {quote(OrderLine._meta.db_table)} ({', '.join(line_columns)}) "
        f"SELECT new_order.{quote(Order._meta.pk.column)}, priced.product_id, priced.quantity, priced.price "
        f"FROM new_order, priced ORDER BY priced.position "
        f"RETURNING {quote(OrderLine._meta.pk.column)}, {', '.join(line_columns)}"
    )
    return sql, order_fields


def _well_formed(lines: Sequence[LineRequest]) -> bool:
    """The checks of validate_lines that need no products: line count, quantities, no SKU twice."""
    return (
        0 < len(lines) <= settings.ORDER_MAX_LINES
        and len({line.sku for line in lines}) == len(lines)
        and all(1 <= line.quantity <= settings.ORDER_MAX_QUANTITY for line in lines)
    )


def validate_lines(lines: Sequence[LineRequest]) -> dict[str, Product]:
    """Raise OrderRejected with a message per wrong field; the products by SKU when all is well."""
    errors: dict[str, list[str]] = {}
    if not lines:
        raise OrderRejected({"lines": ["An order needs at least one line."]})
    if len(lines) > settings.ORDER_MAX_LINES:
        raise OrderRejected({"lines": [f"An order can have at most {settings.ORDER_MAX_LINES} lines."]})
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
        raise OrderRejected(errors)
    return products


def order_for_key(customer_id: int, key: str, fingerprint: str) -> Order | None:
    order = Order.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if order is not None and order.request_fingerprint != fingerprint:
        raise IdempotencyConflict("This Idempotency-Key was already used for a different order.")
    return order
