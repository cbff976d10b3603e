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
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from core.base_task import Attempt
from core.db import fetch_rows, insert_unless_exists, instance_from_row
from core.errors import PermanentFailure, TransientError
from orders import sql
from orders.models import Order, OrderEvent, OrderLine, Payment, Product
from orders.providers import PermanentProviderError, TransientProviderError, carrier, payment_gateway
from orders.services import emails

logger = logging.getLogger(__name__)

Status = Order.Status
Step = Order.Step


class TransientOrderError(TransientError):
    """A step failed in a way that may go away (timeout, network); the task retries."""


class OrderFailed(PermanentFailure):
    """The order failed for good and was compensated; the task ends in FAILURE with the order's reason."""

    @classmethod
    def of(cls, order_id: int) -> OrderFailed:
        reason = Order.objects.filter(pk=order_id).values_list("failure_reason", flat=True).first()
        return cls(reason or f"order {order_id} failed")


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # the task raises OrderFailed for it
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


def process_order(order_id: int, *, attempt: Attempt) -> Outcome:
    """Run the pipeline for one order, resuming after its last finished step (see the module docstring).

    Raises TransientOrderError when the caller should retry; the lease is then held
    for `attempt.retry_in` seconds more, so the sweep leaves the order to that retry.
    """
    task_id = attempt.task_id
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
            out_of_attempts = attempt.is_last or order.attempts >= settings.ORDER_MAX_ATTEMPTS
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
        _hold_lease_for_retry(order_id, task_id, attempt.retry_in, str(exc))
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

    Records the attempt in the order's history and returns the order with the
    customer fields its emails use: one statement on PostgreSQL
    (orders.sql.CLAIM_ORDER), one transaction with the ORM elsewhere.
    """
    now = timezone.now()
    claim = _claim_in_one_statement if sql.in_one_statement() else _claim_with_orm
    order = claim(order_id, task_id, now)
    if order is None:
        logger.info("order %s not claimed by task %s: final, missing, or leased to another task", order_id, task_id)
    return order


def _claim_in_one_statement(order_id: int, task_id: str, now: datetime) -> Order | None:
    rows = fetch_rows(
        sql.CLAIM_ORDER,
        {"order_id": order_id, "task_id": task_id, "now": now, "lease_expires_at": now + settings.ORDER_LEASE_TIMEOUT},
    )
    if not rows:
        return None
    [row] = rows
    order = instance_from_row(Order, row)
    customer = {name.removeprefix("customer__"): value for name, value in row.items() if name.startswith("customer__")}
    order.customer = instance_from_row(Order.customer.field.related_model, {"id": order.customer_id, **customer})
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


# The forward steps prove the lease and record the checkpoint in one conditional
# UPDATE instead of SELECT ... FOR UPDATE followed by an UPDATE: the UPDATE takes
# the same row lock (a cancel waits for the step's transaction, and the other way
# round). Only when it matches nothing is the row read, to find out why.
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
        # A gateway that forgot an earlier attempt's charge may decline its retry:
        # ask it by key before believing the decline.
        if (earlier := payment_gateway().find_charge(idempotency_key=key)) is not None:
            logger.warning("order %s: charge %s declined on retry but found charged; kept", order.pk, key)
            record_charge(order, payment, task_id, earlier.reference)
            return
        _record_payment(payment, Payment.Status.FAILED, task_id, error=str(exc))
        raise _Fail(f"Payment declined: {exc}") from exc
    except TransientProviderError as exc:
        _record_payment(payment, Payment.Status.PENDING, task_id, error=str(exc))
        raise
    record_charge(order, payment, task_id, result.reference)


def reconcile_charge(order: Order, task_id: str) -> Payment | None:
    """The order's charge, with an intent left pending (by a crash or a timeout) settled by asking the gateway.

    Called before an order fails: a pending intent may hide a charge that went
    through, which must then be refunded, not forgotten. Raises
    TransientProviderError when the gateway cannot say yet (the caller retries).
    """
    payment = order.payments.filter(idempotency_key=charge_key(order)).first()
    if payment is None or payment.status != Payment.Status.PENDING:
        return payment
    found = payment_gateway().find_charge(idempotency_key=payment.idempotency_key)
    if found is None:
        _record_payment(payment, Payment.Status.FAILED, task_id, error="The gateway has no charge under this key.")
    else:
        logger.warning("order %s: pending charge %s was charged; recorded", order.pk, payment.idempotency_key)
        _record_payment(payment, Payment.Status.SUCCEEDED, task_id, reference=found.reference)
    return payment


def open_charge(order: Order, task_id: str, key: str) -> Payment:
    """The charge intent, inserted while the order is ours, or the one an earlier attempt left.

    The intent is committed before the gateway is called; once it exists the
    order can no longer be cancelled, and a retry reuses its key. Proving the
    lease takes the order's row lock, which a cancel takes too, so the two
    cannot cross. Only this step creates charge rows.
    """
    payment = Payment(order=order, kind=Payment.Kind.CHARGE, amount=order.total, idempotency_key=key, task_id=task_id)
    with transaction.atomic():
        _renew_lease(order, task_id)
        if not insert_unless_exists(payment):
            payment = Payment.objects.get(idempotency_key=key)
    return payment


def record_charge(order: Order, payment: Payment, task_id: str, reference: str) -> None:
    """Record the successful charge on its intent, then checkpoint 'charged'.

    In this order and without a transaction around them: the payment says what
    the gateway did even when this task lost its lease meanwhile (the new holder
    then finds the charge succeeded and does not call the gateway again), and a
    crash between the two leaves the order at 'reserved', whose retry finds the
    succeeded payment and only moves the checkpoint.
    """
    _record_payment(payment, Payment.Status.SUCCEEDED, task_id, reference=reference)
    _advance(order, task_id, Step.CHARGED)


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
    charge = reconcile_charge(order, task_id)
    if charge is not None and charge.status == Payment.Status.SUCCEEDED:
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
            charge_reference=charge.provider_reference,
            amount=charge.amount,
            idempotency_key=key,
            reference=f"order:{order.pk}",
        )
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
