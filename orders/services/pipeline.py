"""Processing an order: the pipeline reserve stock -> charge -> ship -> notify customer.

The steps run as checkpoints inside one task, not as a chain of four tasks. One
task keeps one lease holder from start to finish, a retry resumes after
`Order.step` without handing state from task to task, and an order costs one
task instead of four (which matters at thousands of orders per minute). Every
outside call (gateway, carrier) is preceded by a committed checkpoint and
carries an idempotency key derived from the order, so a retry never repeats a
finished side effect. Writes that need not be apart share a commit (the claim
and its history entry; the shipment and the completion): on a durable
PostgreSQL each commit waits for the disk, and that, more than queries, is what
an order costs.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Field, Model, Q, QuerySet
from django.utils import timezone

from ops import inserts
from orders.models import Order, OrderEvent, OrderLine, Payment, Product
from orders.providers import PermanentProviderError, TransientProviderError, carrier, payment_gateway
from orders.services import emails

logger = logging.getLogger(__name__)

Status = Order.Status
Step = Order.Step


class TransientOrderError(Exception):
    """A step failed in a way that may go away (timeout, network); the task retries."""


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # final already, or another task holds a live lease
    STOPPED = "stopped"  # the lease was lost mid-way; its new holder carries on


class Stopped(Exception):
    """Stop processing quietly at a step boundary."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


class _Fail(Exception):
    """A permanent failure: compensate, then mark the order failed with this reason."""


def process_order(order_id: int, *, task_id: str, last_attempt: bool = False, retry_in: int = 0) -> Outcome:
    """Run the pipeline for one order, resuming after its last finished step (see the module docstring).

    Raises TransientOrderError when the caller should retry; the lease is then held
    for `retry_in` seconds more, so the sweep leaves the order to that retry.
    """
    order = claim(order_id, task_id)
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
    except Stopped as stop:
        logger.info("order %s: task %s stopped: %s", order_id, task_id, stop)
        OrderEvent.objects.create(order_id=order_id, kind=OrderEvent.Kind.STOPPED, task_id=task_id, message=str(stop))
        return stop.outcome
    except (TransientProviderError, OperationalError) as exc:
        _hold_lease_for_retry(order_id, task_id, retry_in, str(exc))
        raise TransientOrderError(str(exc)) from exc


def _run_steps(order: Order, lines: list[OrderLine], task_id: str) -> None:
    if not order.step_done(Step.RESERVED):
        reserve_stock(order, lines, task_id)
    if not order.step_done(Step.CHARGED):
        charge(order, task_id)
    tracking_number = None if order.step_done(Step.SHIPPED) else _book_shipment(order, lines)
    _complete(order, lines, task_id, tracking_number)


def claim(order_id: int, task_id: str) -> Order | None:
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
    """claim for databases without data-modifying CTEs (SQLite): the same three writes in one transaction."""
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
    """The statement of claim, and the history entry's fields its last parameters fill."""
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
        raise Stopped(Outcome.CANCELLED, "the order was cancelled")
    if current.status != Status.PROCESSING or current.lease_owner != task_id:
        raise Stopped(Outcome.STOPPED, f"lease lost to {current.lease_owner or 'nobody'} (status {current.status})")


def _leased(order: Order, task_id: str) -> QuerySet[Order]:
    return Order.objects.filter(pk=order.pk, status=Status.PROCESSING, lease_owner=task_id)


def _advance(order: Order, task_id: str, step: Step, *, after: Step | None = None, **fields: object) -> bool:
    """Record `step` as finished and renew the lease, while the order is ours and at the step before.

    `after` is that step before when it is not the previous one: the steps in
    between were done in the same transaction. False when a duplicate delivery of
    this task finished the step meanwhile (the caller then skips the step's side
    effects). Raises Stopped when the order was cancelled or its lease went to
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
        raise Stopped(Outcome.STOPPED, f"the order is at step {current.step!r}, not {previous!r}")
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
        raise Stopped(Outcome.STOPPED, "the lease could not be renewed")
    order.lease_expires_at = renewal.get("lease_expires_at", order.lease_expires_at)


def reserve_stock(order: Order, lines: list[OrderLine], task_id: str) -> None:
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


def charge_key(order: Order) -> str:
    return f"order:{order.pk}:charge:{order.replays}"


def charge(order: Order, task_id: str) -> None:
    key = charge_key(order)
    payment = open_charge(order, task_id, key)
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
    record_charge(order, payment, task_id, result.reference)


def open_charge(order: Order, task_id: str, key: str) -> Payment:
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


def record_charge(order: Order, payment: Payment, task_id: str, reference: str) -> None:
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
            _advance(order, task_id, Step.CHARGED)  # raises Stopped, or finds a duplicate delivery got here first
            _record_payment(payment, Payment.Status.SUCCEEDED, task_id, reference=reference)
        return
    for name, value in changes.items():
        setattr(order, name, value)
    for name, value in recorded.items():
        setattr(payment, name, value)
    payment.attempts, payment.updated_at = row[0], now


@functools.cache
def _record_charge_sql(order_changes: tuple[str, ...], payment_changes: tuple[str, ...]) -> str:
    """The statement of record_charge for these changed order and payment fields (the lease renewal varies)."""
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
            emails.notify_order_status(order.pk, order=order, lines=lines)


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
    charge = order.payments.filter(idempotency_key=charge_key(order), status=Payment.Status.SUCCEEDED).first()
    if charge is not None:
        reason = _refund(order, charge, task_id, reason)
    with transaction.atomic():
        locked = _lock_for_step(order, task_id)
        if locked.step_done(Step.RESERVED):
            release_stock(lines)
        locked.status = order.status = Status.FAILED
        locked.failure_reason = order.failure_reason = reason
        locked.lease_owner = ""
        locked.lease_expires_at = None
        locked.save(update_fields=["status", "failure_reason", "lease_owner", "lease_expires_at", "updated_at"])
        OrderEvent.objects.create(order=order, kind=OrderEvent.Kind.FAILED, task_id=task_id, message=reason)
        emails.notify_order_status(order.pk, order=order, lines=lines)
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


def release_stock(lines: Sequence[OrderLine]) -> None:
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
