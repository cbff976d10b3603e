"""The order's money: the charge step (intent first, then the gateway), settling a charge left unknown, the refund.

Every call to the gateway carries an idempotency key derived from the order and
its replay, and its intent (a Payment row) is committed before the call, so a
retry never charges or refunds twice.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from core.db import fetch_rows, insert_unless_exists, instance_from_row, wait_for_disk_on_commit
from orders import sql
from orders.models import Order, OrderEvent, Payment
from orders.providers import PermanentProviderError, TransientProviderError, payment_gateway
from orders.services.lease import (
    StepFailed,
    advance,
    checkpoint,
    checkpointed,
    lease_renewal,
    renew_lease,
    stop_for_lost_lease,
)

logger = logging.getLogger(__name__)

Step = Order.Step


def charge_key(order: Order) -> str:
    return f"order:{order.pk}:charge:{order.replays}"


def charge(order: Order, task_id: str) -> None:
    key = charge_key(order)
    payment = open_charge(order, task_id, key)
    if payment.status == Payment.Status.FAILED:
        raise StepFailed(f"Payment declined: {payment.error}")
    if payment.status == Payment.Status.SUCCEEDED:  # a retry after the charge was recorded
        advance(order, task_id, Step.CHARGED)
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
        raise StepFailed(f"Payment declined: {exc}") from exc
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
    if sql.in_one_statement():
        return _open_charge_in_one_statement(order, task_id, key)
    payment = Payment(order=order, kind=Payment.Kind.CHARGE, amount=order.total, idempotency_key=key, task_id=task_id)
    with transaction.atomic():
        # Money: this commit waits for the disk, and with it every checkpoint before it.
        wait_for_disk_on_commit()
        renew_lease(order, task_id)
        if not insert_unless_exists(payment):
            payment = Payment.objects.get(idempotency_key=key)
    return payment


def _open_charge_in_one_statement(order: Order, task_id: str, key: str) -> Payment:
    """open_charge on PostgreSQL: orders.sql.OPEN_CHARGE, the same lock, renewal, insert and durable commit."""
    now = timezone.now()
    renewal = lease_renewal(order, now)
    params = {
        "order_id": order.pk,
        "task_id": task_id,
        "lease_expires_at": renewal.get("lease_expires_at"),
        "amount": order.total,
        "idempotency_key": key,
        "now": now,
    }
    [row] = fetch_rows(sql.OPEN_CHARGE, params)
    if not row.pop("leased"):
        stop_for_lost_lease(order, task_id)
    order.lease_expires_at = renewal.get("lease_expires_at", order.lease_expires_at)
    if row["id"] is None:  # an earlier attempt's intent
        return Payment.objects.get(idempotency_key=key)
    return instance_from_row(Payment, row)


def record_charge(order: Order, payment: Payment, task_id: str, reference: str) -> None:
    """Record the successful charge on its intent, then checkpoint 'charged'.

    The payment's write does not depend on the checkpoint's: the payment says
    what the gateway did even when this task lost its lease meanwhile (the new
    holder then finds the charge succeeded and does not call the gateway again).
    On PostgreSQL both are one statement (orders.sql.RECORD_CHARGE); elsewhere
    two commits in this order, and a crash between them leaves the order at
    'reserved', whose retry finds the succeeded payment and only moves the
    checkpoint.
    """
    if sql.in_one_statement():
        _record_charge_in_one_statement(order, payment, task_id, reference)
        return
    _record_payment(payment, Payment.Status.SUCCEEDED, task_id, reference=reference)
    advance(order, task_id, Step.CHARGED)


def _record_charge_in_one_statement(order: Order, payment: Payment, task_id: str, reference: str) -> None:
    """record_charge on PostgreSQL: orders.sql.RECORD_CHARGE, the same two writes in one round trip."""
    point = checkpoint(order, Step.CHARGED)
    params = {"payment_id": payment.pk, "reference": reference, "task_id": task_id, "order_id": order.pk}
    [row] = fetch_rows(sql.RECORD_CHARGE, {**params, **point.sql_params()})
    payment.status, payment.error, payment.provider_reference = Payment.Status.SUCCEEDED, "", reference
    payment.task_id, payment.attempts, payment.updated_at = task_id, row["attempts"], point.now
    checkpointed(order, task_id, point, written=row["charged"])


def _record_payment(payment: Payment, status: str, task_id: str, *, error: str = "", reference: str = "") -> None:
    payment.status = status
    payment.error = error
    payment.provider_reference = reference or payment.provider_reference
    payment.task_id = task_id
    payment.attempts += 1
    payment.save(update_fields=["status", "error", "provider_reference", "task_id", "attempts", "updated_at"])


def refund(order: Order, charge: Payment, task_id: str, reason: str) -> str:
    """Refund the charge once (intent first, idempotency key); returns the reason, amended if the refund failed."""
    key = f"order:{order.pk}:refund:{order.replays}"
    with transaction.atomic():
        wait_for_disk_on_commit()  # the refund's intent, as the charge's, is on disk before the gateway is called
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
