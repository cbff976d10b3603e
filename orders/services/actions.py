"""What customers and staff do to orders: cancel, replay a failed one, re-send a waiting one; and the sweep."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from core import dispatch
from core.errors import Refused
from orders.models import Order, OrderEvent
from orders.services import emails
from orders.services.payments import charge_key
from orders.services.pipeline import release_stock

logger = logging.getLogger(__name__)

Status = Order.Status
Step = Order.Step


class CancelRefused(Refused):
    """The order can no longer be cancelled; the message says why."""


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
        if order.payments.filter(idempotency_key=charge_key(order)).exists():
            raise CancelRefused("The payment has already been taken, so the order can no longer be cancelled.")
        if order.step_done(Step.RESERVED):
            release_stock(list(order.lines.all()))
        order.status = Status.CANCELLED
        order.lease_owner = ""
        order.lease_expires_at = None
        order.save(update_fields=["status", "lease_owner", "lease_expires_at", "updated_at"])
        OrderEvent.objects.create(order=order, kind=OrderEvent.Kind.CANCELLED, actor_id=actor_id)
        emails.notify_order_status(order.pk)
    logger.info("order %s cancelled", order_id)
    return order


def retry_failed_order(order_id: int, *, actor_id: int | None = None, task_id: str | None = None) -> bool:
    """Replay a failed order from the start, with fresh payment keys. False if it is not failed."""
    with transaction.atomic():
        replayed = Order.objects.filter(pk=order_id, status=Status.FAILED).update(
            status=Status.PENDING,
            step=Step.NONE,
            failure_reason="",
            tracking_number="",
            lease_owner="",
            lease_expires_at=None,
            replays=F("replays") + 1,
            updated_at=timezone.now(),
        )
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


def retry_processing(order_id: int, *, actor_id: int | None, task_id: str) -> None:
    """Retry a process_order task from its result (ops' "Retry"): replay a failed order, or re-send a waiting one."""
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        raise Refused(f"order {order_id} does not exist")
    if order.status == Status.FAILED:
        retry_failed_order(order.pk, actor_id=actor_id, task_id=task_id)
    elif not requeue_order(order.pk, actor_id=actor_id, task_id=task_id):
        raise Refused(f"order {order.pk} is {order.status} and its lease is live; nothing to retry")


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
