"""Processing an order: the pipeline reserve stock -> charge -> ship -> notify customer.

The steps run as checkpoints inside one task, not as a chain of four tasks. One
task keeps one lease holder from start to finish, a retry resumes after
`Order.step` without handing state from task to task, and an order costs one
task instead of four (which matters at thousands of orders per minute). Every
outside call (gateway, carrier) is preceded by a committed checkpoint and
carries an idempotency key derived from the order, so a retry never repeats a
finished side effect. Writes that need not be apart share a commit (the claim
and its history entry; the shipment and the completion), and of the commits
left only the payment intent's waits for the disk (core.db): on a durable
PostgreSQL a commit that waits costs more than all of an order's queries.

process_order below is the whole story, step by step; the claim, the lease and
the checkpoints are in orders.services.lease, the charge and the refund in
orders.services.payments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import F

from core.base_task import Attempt
from core.db import commits_not_waiting_for_disk, fetch_rows
from core.errors import PermanentFailure, TransientError
from orders import sql
from orders.models import Order, OrderEvent, OrderLine, Payment, Product
from orders.providers import PermanentProviderError, TransientProviderError, carrier
from orders.services import emails, lease, payments
from orders.services.lease import Outcome, StepFailed, Stopped

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


def process_order(order_id: int, *, attempt: Attempt) -> Outcome:
    """Run the pipeline for one order, resuming after its last finished step (see the module docstring).

    Raises TransientOrderError when the caller should retry; the lease is then held
    for `attempt.retry_in` seconds more, so the sweep leaves the order to that retry.
    """
    # The checkpoints' commits do not wait for the disk, except the payment
    # intent's before the gateway is called (payments.open_charge): see core.db.
    # What a crash of PostgreSQL itself can take back is redone from the last
    # commit that waited, every outside call carrying the same idempotency key;
    # the task's result, saved after it returns, and the email's "sent" wait.
    with commits_not_waiting_for_disk():
        return _process(order_id, attempt)


def _process(order_id: int, attempt: Attempt) -> Outcome:
    task_id = attempt.task_id
    claimed = lease.claim(order_id, task_id)
    if claimed is None:
        # Final, or leased to another task. A final order's email may not have been
        # published, if this is a copy delivered again after an outage (see there).
        emails.publish_unsent(order_id)
        return Outcome.SKIPPED
    order, lines = claimed
    try:
        try:
            if order.is_compensating:
                raise StepFailed(order.failure_reason)
            _run_steps(order, lines, task_id)
            logger.info("order %s completed by task %s", order_id, task_id)
            return Outcome.COMPLETED
        except StepFailed as failure:
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
        lease.hold_lease_for_retry(order_id, task_id, attempt.retry_in, str(exc))
        raise TransientOrderError(str(exc)) from exc


def _run_steps(order: Order, lines: list[OrderLine], task_id: str) -> None:
    if not order.step_done(Step.RESERVED):
        reserve_stock(order, lines, task_id)
    if not order.step_done(Step.CHARGED):
        payments.charge(order, task_id)
    tracking_number = None if order.step_done(Step.SHIPPED) else _book_shipment(order, lines)
    _complete(order, lines, task_id, tracking_number)


def reserve_stock(order: Order, lines: list[OrderLine], task_id: str) -> None:
    """Take the lines' quantities from stock and record the checkpoint, all or nothing; StepFailed when short."""
    if sql.in_one_statement():
        _reserve_in_one_statement(order, lines, task_id)
        return
    with transaction.atomic():
        if not lease.advance(order, task_id, Step.RESERVED):
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
                raise StepFailed(f"Out of stock: not enough {line.product.sku} left for {line.quantity}.") from None


def _reserve_in_one_statement(order: Order, lines: list[OrderLine], task_id: str) -> None:
    """reserve_stock on PostgreSQL: orders.sql.RESERVE_STOCK, the same locks and writes in one round trip."""
    point = lease.checkpoint(order, Step.RESERVED)
    params = {
        "order_id": order.pk,
        "task_id": task_id,
        **point.sql_params(),
        "product_ids": [line.product_id for line in lines],
        "quantities": [line.quantity for line in lines],
    }
    [row] = fetch_rows(sql.RESERVE_STOCK, params)
    if row["short_sku"] is not None:
        raise StepFailed(f"Out of stock: not enough {row['short_sku']} left for {row['short_quantity']}.")
    lease.checkpointed(order, task_id, point, written=row["reserved"])


def _book_shipment(order: Order, lines: list[OrderLine]) -> str:
    """Book the parcel with the carrier (idempotent per order and replay); returns the tracking number."""
    try:
        result = carrier().book_shipment(
            idempotency_key=f"order:{order.pk}:ship:{order.replays}", reference=f"order:{order.pk}", parcels=len(lines)
        )
    except PermanentProviderError as exc:
        raise StepFailed(f"Shipping refused: {exc}") from exc
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
        finished = lease.advance(order, task_id, Step.NOTIFIED, after=after, **fields)
        if finished:
            # The customer's email is a row in this same transaction; it is sent
            # after commit. The order row is locked by the UPDATE above, so the
            # copy in hand is what is committed.
            emails.notify_order_status(order.pk, order=order, lines=lines)


def _compensate_and_fail(order: Order, lines: list[OrderLine], task_id: str, reason: str) -> None:
    """Refund a successful charge, release reserved stock, then mark the order failed. Safe to resume."""
    with transaction.atomic():
        locked = lease.lock_for_step(order, task_id)
        if not locked.failure_reason:
            # Recording the reason first marks the order as compensating, so a
            # retry after a crash resumes the refund instead of the pipeline.
            locked.failure_reason = reason
            locked.save(update_fields=["failure_reason", "updated_at"])
        order.failure_reason = reason = locked.failure_reason
    charge = payments.reconcile_charge(order, task_id)
    if charge is not None and charge.status == Payment.Status.SUCCEEDED:
        reason = payments.refund(order, charge, task_id, reason)
    with transaction.atomic():
        locked = lease.lock_for_step(order, task_id)
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


def release_stock(lines: Sequence[OrderLine]) -> None:
    for line in sorted(lines, key=lambda item: item.product_id):
        Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)
