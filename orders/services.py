"""Orders: place, process (the pipeline), cancel, replay and sweep.

This module is what "an order" means. Views, tasks, admin actions and commands
only call the functions here.

Processing runs the steps reserve stock -> charge -> ship -> notify customer as
checkpoints inside one task, not as a chain of four tasks. One task keeps one
lease holder from start to finish, a retry resumes after `Order.step` without
handing state from task to task, and an order costs one task instead of four
(which matters at thousands of orders per minute). Every outside call
(gateway, carrier) is preceded by a committed checkpoint and carries an
idempotency key derived from the order, so a retry never repeats a finished
side effect. Writes that need not be apart share a commit (the claim and its
history entry; the shipment and the completion): on a durable PostgreSQL each
commit waits for the disk, and that, more than queries, is what an order costs.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Field, Model, Q, QuerySet
from django.utils import timezone

from core import dispatch
from notifications import services as notification_services
from ops import inserts
from orders.models import Order, OrderEvent, OrderLine, Payment, Product
from orders.providers import PermanentProviderError, TransientProviderError, carrier, payment_gateway

logger = logging.getLogger(__name__)

Status = Order.Status
Step = Order.Step


class OrderRejected(Exception):
    """The order request is invalid; `errors` maps field paths to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused for a different request."""


class CancelRefused(Exception):
    """The order can no longer be cancelled; the message says why."""


class TransientOrderError(Exception):
    """A step failed in a way that may go away (timeout, network); the task retries."""


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # final already, or another task holds a live lease
    STOPPED = "stopped"  # the lease was lost mid-way; its new holder carries on


class _Stop(Exception):
    """Stop processing quietly at a step boundary."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


class _Fail(Exception):
    """A permanent failure: compensate, then mark the order failed with this reason."""


@dataclass(frozen=True)
class LineRequest:
    sku: str
    quantity: int


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    created: bool


# --- placing ------------------------------------------------------------------------


def place_order(*, customer_id: int, lines: Sequence[LineRequest], idempotency_key: str | None = None) -> PlacedOrder:
    """Validate and save an order with its lines in one statement; enqueue processing after the commit."""
    if not _well_formed(lines):
        _validate_lines(lines)  # raises, with a message for every line that is wrong
    fingerprint = hashlib.sha256(repr(sorted((line.sku, line.quantity) for line in lines)).encode()).hexdigest()
    if idempotency_key:
        existing = _order_for_key(customer_id, idempotency_key, fingerprint)
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
                _validate_lines(lines)
                saved = _insert_order(order, lines)
    except IntegrityError:
        # Two requests with the same key raced; the other one's order is the answer.
        existing = _order_for_key(customer_id, idempotency_key, fingerprint) if idempotency_key else None
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
    products = _validate_lines(lines)
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
    """The checks of _validate_lines that need no products: line count, quantities, no SKU twice."""
    return (
        0 < len(lines) <= settings.ORDER_MAX_LINES
        and len({line.sku for line in lines}) == len(lines)
        and all(1 <= line.quantity <= settings.ORDER_MAX_QUANTITY for line in lines)
    )


def _validate_lines(lines: Sequence[LineRequest]) -> dict[str, Product]:
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


def _order_for_key(customer_id: int, key: str, fingerprint: str) -> Order | None:
    order = Order.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if order is not None and order.request_fingerprint != fingerprint:
        raise IdempotencyConflict("This Idempotency-Key was already used for a different order.")
    return order


# --- processing ---------------------------------------------------------------------


def process_order(order_id: int, *, task_id: str, last_attempt: bool = False, retry_in: int = 0) -> Outcome:
    """Run the pipeline for one order, resuming after its last finished step (see the module docstring).

    Raises TransientOrderError when the caller should retry; the lease is then held
    for `retry_in` seconds more, so the sweep leaves the order to that retry.
    """
    order = _claim(order_id, task_id)
    if order is None:
        return Outcome.SKIPPED
    lines = list(order.lines.select_related("product").order_by("product_id"))
    try:
        try:
            if order.is_compensating:
                raise _Fail(order.failure_reason)
            _run_steps(order, lines, task_id)
            logger.info("order %s completed by task %s", order_id, task_id)
            return Outcome.COMPLETED
        except _Fail as failure:
            reason = str(failure)
        except (TransientProviderError, OperationalError) as exc:
            out_of_attempts = last_attempt or order.attempts >= settings.ORDER_MAX_ATTEMPTS
            if order.is_compensating or not out_of_attempts:
                raise
            reason = f"Gave up after {order.attempts} attempts: {exc}"
        _compensate_and_fail(order, lines, task_id, reason)
        return Outcome.FAILED
    except _Stop as stop:
        logger.info("order %s: task %s stopped: %s", order_id, task_id, stop)
        OrderEvent.objects.create(order_id=order_id, kind=OrderEvent.Kind.STOPPED, task_id=task_id, message=str(stop))
        return stop.outcome
    except (TransientProviderError, OperationalError) as exc:
        _hold_lease_for_retry(order_id, task_id, retry_in, str(exc))
        raise TransientOrderError(str(exc)) from exc


def _run_steps(order: Order, lines: list[OrderLine], task_id: str) -> None:
    if not order.step_done(Step.RESERVED):
        _reserve_stock(order, lines, task_id)
    if not order.step_done(Step.CHARGED):
        _charge(order, task_id)
    tracking_number = None if order.step_done(Step.SHIPPED) else _book_shipment(order, lines)
    _complete(order, lines, task_id, tracking_number)


def _claim(order_id: int, task_id: str) -> Order | None:
    """Take the order's lease: pending, or processing with our own or an expired lease. None if someone else holds it.

    One statement (atomic by itself, so no BEGIN or COMMIT): the conditional
    UPDATE, the ATTEMPT history entry, and the claimed order with its customer
    (who is emailed at the end). The ORM needs an UPDATE, a SELECT, an INSERT
    and a COMMIT for the same, and this runs for every order.
    """
    now = timezone.now()
    claim = _claim_in_one_statement if inserts.single_statements() else _claim_with_orm
    order = claim(order_id, task_id, now)
    if order is None:
        logger.info("order %s not claimed by task %s: final, missing, or leased to another task", order_id, task_id)
    return order


def _claim_in_one_statement(order_id: int, task_id: str, now: datetime) -> Order | None:
    sql, event_fields = _claim_sql()
    event = OrderEvent(kind=OrderEvent.Kind.ATTEMPT, task_id=task_id, created_at=now)
    params = [Status.PROCESSING, task_id, now + settings.ORDER_LEASE_TIMEOUT, now]
    params += [order_id, Status.PENDING, Status.PROCESSING, task_id, now]
    params += inserts.values_of(event, event_fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    order_fields, customer_model = Order._meta.concrete_fields, Order._meta.get_field("customer").related_model
    order = Order.from_db(connection.alias, [field.attname for field in order_fields], row[: len(order_fields)])
    customer_fields = customer_model._meta.concrete_fields
    order.customer = customer_model.from_db(
        connection.alias, [field.attname for field in customer_fields], row[len(order_fields) :]
    )
    return order


def _claim_with_orm(order_id: int, task_id: str, now: datetime) -> Order | None:
    """_claim for databases without data-modifying CTEs (SQLite): the same three writes in one transaction."""
    claimable = Q(status=Status.PENDING) | Q(status=Status.PROCESSING) & (
        Q(lease_owner=task_id) | Q(lease_expires_at__lt=now)
    )
    with transaction.atomic():
        claimed = Order.objects.filter(claimable, pk=order_id).update(
            status=Status.PROCESSING,
            lease_owner=task_id,
            lease_expires_at=now + settings.ORDER_LEASE_TIMEOUT,
            attempts=F("attempts") + 1,
            updated_at=now,
        )
        if not claimed:
            return None
        order = Order.objects.select_related("customer").get(pk=order_id)
        OrderEvent.objects.create(
            order=order,
            kind=OrderEvent.Kind.ATTEMPT,
            task_id=task_id,
            message=f"attempt {order.attempts}",
            created_at=now,
        )
    return order


@functools.cache
def _claim_sql() -> tuple[str, list[Field]]:
    """The statement of _claim, and the history entry's fields its last parameters fill."""
    quote = connection.ops.quote_name
    column = {name: quote(Order._meta.get_field(name).column) for name in (
        "status", "lease_owner", "lease_expires_at", "attempts", "updated_at", "customer", "id"
    )}  # fmt: skip
    customer_model = Order._meta.get_field("customer").related_model
    event_fields = inserts.fields_of(OrderEvent, without=("order", "message"))
    event_columns = [quote(OrderEvent._meta.get_field(name).column) for name in ("order", "message")]
    sql = (
        f"WITH claimed AS (UPDATE {quote(Order._meta.db_table)} SET {column['status']} = %s, "  # noqa: S608
        f"{column['lease_owner']} = %s, {column['lease_expires_at']} = %s, "
        f"{column['attempts']} = {column['attempts']} + 1, {column['updated_at']} = %s "
        f"WHERE {column['id']} = %s AND ({column['status']} = %s OR ({column['status']} = %s "
        f"AND ({column['lease_owner']} = %s OR {column['lease_expires_at']} < %s))) "
        f"RETURNING {', '.join(quote(field.column) for field in Order._meta.concrete_fields)}), "
        f"attempt AS (INSERT INTO {quote(OrderEvent._meta.db_table)} "
        f"({', '.join(event_columns)}, {inserts.columns(event_fields)}) "
        f"SELECT {column['id']}, 'attempt ' || {column['attempts']}, {inserts.placeholders(len(event_fields))} "
        f"FROM claimed) "
        f"SELECT claimed.*, {', '.join('customer.' + quote(field.column) for field in customer_model._meta.concrete_fields)} "
        f"FROM claimed JOIN {quote(customer_model._meta.db_table)} customer "
        f"ON customer.{quote(customer_model._meta.pk.column)} = claimed.{column['customer']}"
    )
    return sql, event_fields


def _lock_for_step(order: Order, task_id: str) -> Order:
    """Lock the order row; stop if it was cancelled or our lease was taken over (the compensation path)."""
    locked = Order.objects.select_for_update().get(pk=order.pk)
    _stop_unless_leased(locked, task_id)
    return locked


def _stop_unless_leased(current: Order, task_id: str) -> None:
    if current.status == Status.CANCELLED:
        raise _Stop(Outcome.CANCELLED, "the order was cancelled")
    if current.status != Status.PROCESSING or current.lease_owner != task_id:
        raise _Stop(Outcome.STOPPED, f"lease lost to {current.lease_owner or 'nobody'} (status {current.status})")


def _leased(order: Order, task_id: str) -> QuerySet[Order]:
    return Order.objects.filter(pk=order.pk, status=Status.PROCESSING, lease_owner=task_id)


# The forward steps prove the lease and record the checkpoint in one conditional
# UPDATE instead of SELECT ... FOR UPDATE followed by an UPDATE: the UPDATE takes
# the same row lock (a cancel waits for the step's transaction, and the other way
# round). Only when it matches nothing is the row read, to find out why. With
# this and the one-statement claim and charge, an order that goes through
# without a hitch is 16 statements, BEGIN and COMMIT included (there were 45).


def _advance(order: Order, task_id: str, step: Step, *, after: Step | None = None, **fields: object) -> bool:
    """Record `step` as finished and renew the lease, while the order is ours and at the step before.

    `after` is that step before when it is not the previous one: the steps in
    between were done in the same transaction. False when a duplicate delivery of
    this task finished the step meanwhile (the caller then skips the step's side
    effects). Raises _Stop when the order was cancelled or its lease went to
    another task.
    """
    now = timezone.now()
    changes = {"step": step, "updated_at": now, **_lease_renewal(order, now), **fields}
    previous = _STEPS[_STEPS.index(step) - 1] if after is None else after
    if _leased(order, task_id).filter(step=previous).update(**changes):
        for name, value in changes.items():
            setattr(order, name, value)
        return True
    current = Order.objects.get(pk=order.pk)
    _stop_unless_leased(current, task_id)
    if not current.step_done(step):
        raise _Stop(Outcome.STOPPED, f"the order is at step {current.step!r}, not {previous!r}")
    order.step, order.tracking_number = current.step, current.tracking_number
    return False


_STEPS = list(Step)


def _lease_renewal(order: Order, now: datetime) -> dict[str, object]:
    """The new lease expiry, once less than half of the lease is left; nothing before that.

    The lease expiry is indexed (the sweep looks for expired ones), so renewing it
    at every step made every checkpoint a non-HOT update: a new entry in each of
    the table's indexes. A checkpoint that only moves `step` stays on its page.
    Half a lease (a minute by default) is far longer than any step.
    """
    if order.lease_expires_at and order.lease_expires_at - now > settings.ORDER_LEASE_TIMEOUT / 2:
        return {}
    return {"lease_expires_at": now + settings.ORDER_LEASE_TIMEOUT}


def _renew_lease(order: Order, task_id: str) -> None:
    """Prove the lease (renewing it when due) without finishing a step; takes the row lock inside a transaction."""
    renewal = _lease_renewal(order, timezone.now())
    leased = _leased(order, task_id)
    if not (leased.update(**renewal) if renewal else leased.select_for_update().exists()):
        _stop_unless_leased(Order.objects.get(pk=order.pk), task_id)
        raise _Stop(Outcome.STOPPED, "the lease could not be renewed")
    order.lease_expires_at = renewal.get("lease_expires_at", order.lease_expires_at)


def _reserve_stock(order: Order, lines: list[OrderLine], task_id: str) -> None:
    with transaction.atomic():
        if not _advance(order, task_id, Step.RESERVED):
            return
        # Lines are sorted by product id, so two reservations lock products in
        # the same order and cannot deadlock. The check constraint refuses a
        # decrement below zero: of two orders racing for the last unit, the
        # second waits for the first to commit and then fails here (and the
        # checkpoint above is rolled back with it).
        for line in lines:
            try:
                Product.objects.filter(pk=line.product_id).update(stock=F("stock") - line.quantity)
            except IntegrityError:
                raise _Fail(f"Out of stock: not enough {line.product.sku} left for {line.quantity}.") from None


def _charge_key(order: Order) -> str:
    return f"order:{order.pk}:charge:{order.replays}"


def _charge(order: Order, task_id: str) -> None:
    key = _charge_key(order)
    payment = _open_charge(order, task_id, key)
    if payment.status == Payment.Status.FAILED:
        raise _Fail(f"Payment declined: {payment.error}")
    if payment.status == Payment.Status.SUCCEEDED:  # a retry after the charge was recorded
        _advance(order, task_id, Step.CHARGED)
        return
    try:
        result = payment_gateway().charge(amount=payment.amount, idempotency_key=key, reference=f"order:{order.pk}")
    except PermanentProviderError as exc:
        _record_payment(payment, Payment.Status.FAILED, task_id, error=str(exc))
        raise _Fail(f"Payment declined: {exc}") from exc
    except TransientProviderError as exc:
        _record_payment(payment, Payment.Status.PENDING, task_id, error=str(exc))
        raise
    _record_charge(order, payment, task_id, result.reference)


def _open_charge(order: Order, task_id: str, key: str) -> Payment:
    """The charge intent, inserted while the order is ours, or the one an earlier attempt left.

    The intent is committed before the gateway is called; once it exists the
    order can no longer be cancelled, and a retry reuses its key. The INSERT
    selects from the order row FOR UPDATE, so proving the lease, taking the row
    lock a cancel also takes, and creating the intent are one statement. Only
    this step creates charge rows, so insert-or-read cannot race.
    """
    payment = Payment(order=order, kind=Payment.Kind.CHARGE, amount=order.total, idempotency_key=key, task_id=task_id)
    if _lease_renewal(order, timezone.now()) or not inserts.single_statements():  # the general path
        with transaction.atomic():
            _renew_lease(order, task_id)
            if not inserts.insert_unless_exists(payment, "idempotency_key"):
                payment = Payment.objects.get(idempotency_key=key)
        return payment
    if inserts.insert_unless_exists(payment, "idempotency_key", guard=_lease_guard(order, task_id)):
        return payment
    _stop_unless_leased(Order.objects.get(pk=order.pk), task_id)  # raises when the lease is gone
    return Payment.objects.get(idempotency_key=key)


def _lease_guard(order: Order, task_id: str) -> tuple[str, list[object]]:
    """FROM ... WHERE ... FOR UPDATE: the order row while it is processing and leased to `task_id`."""
    return _lease_guard_sql(), [order.pk, Status.PROCESSING, task_id]


@functools.cache
def _lease_guard_sql() -> str:
    quote = connection.ops.quote_name
    column = {name: quote(Order._meta.get_field(name).column) for name in ("id", "status", "lease_owner")}
    return (
        f"FROM {quote(Order._meta.db_table)} WHERE {column['id']} = %s AND {column['status']} = %s "
        f"AND {column['lease_owner']} = %s FOR UPDATE"
    )


def _record_charge(order: Order, payment: Payment, task_id: str, reference: str) -> None:
    """Checkpoint 'charged' and record the successful payment, in one statement when the order is at 'reserved'.

    An UPDATE of the order in a CTE, and the payment's UPDATE only if that one
    matched: no BEGIN, no COMMIT, and one round trip instead of four. When the
    order is not where this task left it, or on SQLite, the general path runs.
    """
    now = timezone.now()
    changes = {"step": Step.CHARGED, "updated_at": now, **_lease_renewal(order, now)}
    recorded = {"status": Payment.Status.SUCCEEDED, "error": "", "provider_reference": reference, "task_id": task_id}
    row = None
    if inserts.single_statements():
        params = [*changes.values(), order.pk, Status.PROCESSING, task_id, Step.RESERVED, *recorded.values(), now]
        with connection.cursor() as cursor:
            cursor.execute(_record_charge_sql(tuple(changes), tuple(recorded)), [*params, payment.pk])
            row = cursor.fetchone()
    if row is None:
        with transaction.atomic():
            _advance(order, task_id, Step.CHARGED)  # raises _Stop, or finds a duplicate delivery got here first
            _record_payment(payment, Payment.Status.SUCCEEDED, task_id, reference=reference)
        return
    for name, value in changes.items():
        setattr(order, name, value)
    for name, value in recorded.items():
        setattr(payment, name, value)
    payment.attempts, payment.updated_at = row[0], now


@functools.cache
def _record_charge_sql(order_changes: tuple[str, ...], payment_changes: tuple[str, ...]) -> str:
    """The statement of _record_charge for these changed order and payment fields (the lease renewal varies)."""
    quote = connection.ops.quote_name

    def assignments(model: type[Model], names: tuple[str, ...]) -> str:
        return ", ".join(f"{quote(model._meta.get_field(name).column)} = %s" for name in names)

    order_column = {name: quote(Order._meta.get_field(name).column) for name in ("id", "status", "lease_owner", "step")}
    attempts, updated_at = (quote(Payment._meta.get_field(name).column) for name in ("attempts", "updated_at"))
    return (
        f"WITH advanced AS (UPDATE {quote(Order._meta.db_table)} SET {assignments(Order, order_changes)} "  # noqa: S608
        f"WHERE {order_column['id']} = %s AND {order_column['status']} = %s AND {order_column['lease_owner']} = %s "
        f"AND {order_column['step']} = %s RETURNING 1) "
        f"UPDATE {quote(Payment._meta.db_table)} SET {assignments(Payment, payment_changes)}, "
        f"{attempts} = {attempts} + 1, {updated_at} = %s "
        f"WHERE {quote(Payment._meta.pk.column)} = %s AND EXISTS (SELECT 1 FROM advanced) RETURNING {attempts}"
    )


def _record_payment(payment: Payment, status: str, task_id: str, *, error: str = "", reference: str = "") -> None:
    payment.status = status
    payment.error = error
    payment.provider_reference = reference or payment.provider_reference
    payment.task_id = task_id
    payment.attempts += 1
    payment.save(update_fields=["status", "error", "provider_reference", "task_id", "attempts", "updated_at"])


def _book_shipment(order: Order, lines: list[OrderLine]) -> str:
    """Book the parcel with the carrier (idempotent per order and replay); returns the tracking number."""
    try:
        result = carrier().book_shipment(
            idempotency_key=f"order:{order.pk}:ship:{order.replays}", reference=f"order:{order.pk}", parcels=len(lines)
        )
    except PermanentProviderError as exc:
        raise _Fail(f"Shipping refused: {exc}") from exc
    return result.reference


def _complete(order: Order, lines: list[OrderLine], task_id: str, tracking_number: str | None) -> None:
    """Record the shipment (when just booked) and the completion, and queue the customer's email: one commit.

    Nothing outside is called between the two checkpoints, so they are one
    UPDATE (charged -> notified, with the tracking number); a crash before its
    commit re-books the shipment with the same idempotency key, which the
    carrier answers with the same parcel.
    """
    fields: dict[str, object] = {"status": Status.COMPLETED, "lease_owner": "", "lease_expires_at": None}
    after = None
    if tracking_number is not None:
        fields["tracking_number"], after = tracking_number, Step.CHARGED
    with transaction.atomic():
        finished = _advance(order, task_id, Step.NOTIFIED, after=after, **fields)
        if finished:
            # The customer's email is a row in this same transaction; it is sent
            # after commit. The order row is locked by the UPDATE above, so the
            # copy in hand is what is committed.
            notification_services.notify_order_status(order.pk, order=order, lines=lines)


def _compensate_and_fail(order: Order, lines: list[OrderLine], task_id: str, reason: str) -> None:
    """Refund a successful charge, release reserved stock, then mark the order failed. Safe to resume."""
    with transaction.atomic():
        locked = _lock_for_step(order, task_id)
        if not locked.failure_reason:
            # Recording the reason first marks the order as compensating, so a
            # retry after a crash resumes the refund instead of the pipeline.
            locked.failure_reason = reason
            locked.save(update_fields=["failure_reason", "updated_at"])
        order.failure_reason = reason = locked.failure_reason
    charge = order.payments.filter(idempotency_key=_charge_key(order), status=Payment.Status.SUCCEEDED).first()
    if charge is not None:
        reason = _refund(order, charge, task_id, reason)
    with transaction.atomic():
        locked = _lock_for_step(order, task_id)
        if locked.step_done(Step.RESERVED):
            _release_stock(lines)
        locked.status = order.status = Status.FAILED
        locked.failure_reason = order.failure_reason = reason
        locked.lease_owner = ""
        locked.lease_expires_at = None
        locked.save(update_fields=["status", "failure_reason", "lease_owner", "lease_expires_at", "updated_at"])
        OrderEvent.objects.create(order=order, kind=OrderEvent.Kind.FAILED, task_id=task_id, message=reason)
        notification_services.notify_order_status(order.pk, order=order, lines=lines)
    logger.warning("order %s failed (task %s): %s", order.pk, task_id, reason)


def _refund(order: Order, charge: Payment, task_id: str, reason: str) -> str:
    """Refund the charge once (intent first, idempotency key); returns the reason, amended if the refund failed."""
    key = f"order:{order.pk}:refund:{order.replays}"
    refund, _ = Payment.objects.get_or_create(
        idempotency_key=key,
        defaults={"order": order, "kind": Payment.Kind.REFUND, "amount": charge.amount, "task_id": task_id},
    )
    if refund.status == Payment.Status.SUCCEEDED:
        return reason
    if refund.status == Payment.Status.FAILED:
        return f"{reason} Refund failed, needs manual attention: {refund.error}"
    try:
        result = payment_gateway().refund(
            charge_reference=charge.provider_reference, amount=charge.amount,
            idempotency_key=key, reference=f"order:{order.pk}",
        )  # fmt: skip
    except TransientProviderError as exc:
        _record_payment(refund, Payment.Status.PENDING, task_id, error=str(exc))
        raise
    except PermanentProviderError as exc:
        _record_payment(refund, Payment.Status.FAILED, task_id, error=str(exc))
        logger.error("order %s: refund of %s refused, needs manual attention: %s", order.pk, charge.amount, exc)
        return f"{reason} Refund failed, needs manual attention: {exc}"
    _record_payment(refund, Payment.Status.SUCCEEDED, task_id, reference=result.reference)
    OrderEvent.objects.create(
        order=order, kind=OrderEvent.Kind.COMPENSATED, task_id=task_id, message=f"refunded {charge.amount}"
    )
    return reason


def _release_stock(lines: Sequence[OrderLine]) -> None:
    for line in sorted(lines, key=lambda item: item.product_id):
        Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)


def _hold_lease_for_retry(order_id: int, task_id: str, retry_in: int, error: str) -> None:
    """Keep the lease through the retry's countdown, so the sweep does not send a second task meanwhile."""
    until = timezone.now() + timedelta(seconds=retry_in) + settings.ORDER_LEASE_TIMEOUT
    try:
        Order.objects.filter(pk=order_id, lease_owner=task_id, status=Status.PROCESSING).update(lease_expires_at=until)
        OrderEvent.objects.create(
            order_id=order_id, kind=OrderEvent.Kind.RETRY, task_id=task_id, message=f"retry in {retry_in}s: {error}"
        )
    except DatabaseError:  # the database itself may be what failed; the lease then simply expires
        logger.exception("order %s: could not hold the lease for the retry", order_id)
    logger.warning("order %s: task %s will retry in %ss: %s", order_id, task_id, retry_in, error)


# --- customers and staff ------------------------------------------------------------


def cancel_order(order_id: int, *, customer_id: int | None = None, actor_id: int | None = None) -> Order:
    """Cancel a pending order, or a processing one whose charge has not started; release its stock.

    The stock is released in the same transaction that marks the order cancelled,
    so no cancelled order keeps stock even if its task never runs again; a running
    task sees the cancellation at its next step boundary and stops.
    Raises Order.DoesNotExist (not the customer's order) or CancelRefused.
    """
    with transaction.atomic():
        orders = Order.objects.select_for_update()
        if customer_id is not None:
            orders = orders.filter(customer_id=customer_id)
        order = orders.get(pk=order_id)
        if order.status == Status.CANCELLED:
            return order
        if order.status in (Status.COMPLETED, Status.FAILED):
            raise CancelRefused(f"The order is already {order.status}.")
        if order.is_compensating:
            raise CancelRefused("The order is failing and being refunded.")
        if order.payments.filter(idempotency_key=_charge_key(order)).exists():
            raise CancelRefused("The payment has already been taken, so the order can no longer be cancelled.")
        if order.step_done(Step.RESERVED):
            _release_stock(list(order.lines.all()))
        order.status = Status.CANCELLED
        order.lease_owner = ""
        order.lease_expires_at = None
        order.save(update_fields=["status", "lease_owner", "lease_expires_at", "updated_at"])
        OrderEvent.objects.create(order=order, kind=OrderEvent.Kind.CANCELLED, actor_id=actor_id)
        notification_services.notify_order_status(order.pk)
    logger.info("order %s cancelled", order_id)
    return order


def retry_failed_order(order_id: int, *, actor_id: int | None = None, task_id: str | None = None) -> bool:
    """Replay a failed order from the start, with fresh payment keys. False if it is not failed."""
    with transaction.atomic():
        replayed = Order.objects.filter(pk=order_id, status=Status.FAILED).update(
            status=Status.PENDING, step=Step.NONE, failure_reason="", tracking_number="",
            lease_owner="", lease_expires_at=None, replays=F("replays") + 1, updated_at=timezone.now(),
        )  # fmt: skip
        if replayed:
            OrderEvent.objects.create(order_id=order_id, kind=OrderEvent.Kind.REPLAYED, actor_id=actor_id)
            dispatch.send_on_commit("orders.tasks.process_order", [order_id], task_id=task_id)
    return bool(replayed)


def requeue_order(order_id: int, *, actor_id: int | None = None, task_id: str | None = None) -> bool:
    """Send a pending order (or one whose lease expired) to the workers again. False if it is not waiting."""
    now = timezone.now()
    waiting = Q(status=Status.PENDING) | Q(status=Status.PROCESSING, lease_expires_at__lt=now)
    with transaction.atomic():
        marked = Order.objects.filter(waiting, pk=order_id).update(requeued_at=now)
        if marked:
            OrderEvent.objects.create(order_id=order_id, kind=OrderEvent.Kind.REQUEUED, actor_id=actor_id)
            dispatch.send_on_commit("orders.tasks.process_order", [order_id], task_id=task_id)
    return bool(marked)


def retry_processing(args: list, kwargs: dict, *, actor_id: int | None, task_id: str) -> None:
    """Retry a process_order task from its result (ops' "Retry"): replay a failed order, or re-send a waiting one."""
    order_id = kwargs.get("order_id", args[0] if args else None)
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        raise ValueError(f"order {order_id} does not exist")
    if order.status == Status.FAILED:
        retry_failed_order(order.pk, actor_id=actor_id, task_id=task_id)
    elif not requeue_order(order.pk, actor_id=actor_id, task_id=task_id):
        raise ValueError(f"order {order.pk} is {order.status} and its lease is live; nothing to retry")


# Bounded so that one run stays well inside the sweep's time limit; the next
# minute's run takes the rest.
SWEEP_BATCH_SIZE = 1000


def requeue_stuck_orders() -> int:
    """Re-send pending orders older than ORDER_REQUEUE_AFTER and processing orders whose lease expired."""
    now = timezone.now()
    cutoff = now - settings.ORDER_REQUEUE_AFTER
    not_recently_sent = Q(requeued_at__isnull=True) | Q(requeued_at__lt=cutoff)
    stuck = Q(status=Status.PENDING, created_at__lt=cutoff) | Q(status=Status.PROCESSING, lease_expires_at__lt=now)
    ids = list(
        Order.objects.filter(stuck & not_recently_sent)
        .order_by("created_at")
        .values_list("pk", flat=True)[:SWEEP_BATCH_SIZE]
    )
    if not ids:
        return 0
    Order.objects.filter(pk__in=ids).update(requeued_at=now)
    OrderEvent.objects.bulk_create(
        OrderEvent(order_id=pk, kind=OrderEvent.Kind.REQUEUED, message="sweep: pending too long or lease expired")
        for pk in ids
    )
    sent = sum(dispatch.send("orders.tasks.process_order", [pk]) for pk in ids)
    logger.info("sweep re-enqueued %s of %s stuck orders", sent, len(ids))
    return sent
