"""The customer's emails about their order (completed, failed, cancelled), queued in the notifications outbox."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from notifications.services import outbox
from orders.models import Order, OrderLine

logger = logging.getLogger(__name__)


# The email kind, subject and template for each final status.
ORDER_EMAILS = {
    Order.Status.COMPLETED: (outbox.Kind.ORDER_COMPLETED, "Your order #{id} is on its way", "completed"),
    Order.Status.FAILED: (outbox.Kind.ORDER_FAILED, "We could not complete your order #{id}", "failed"),
    Order.Status.CANCELLED: (outbox.Kind.ORDER_CANCELLED, "Your order #{id} is cancelled", "cancelled"),
}


def notify_order_status(
    order_id: int, *, order: Order | None = None, lines: Sequence[OrderLine] | None = None
) -> object | None:
    """Tell the customer their order completed, failed or was cancelled (a row in the caller's transaction).

    A caller that holds the order row locked in this transaction, with its lines,
    may pass them (the pipeline does); otherwise they are read here.
    """
    if order is None:
        order = Order.objects.select_related("customer").get(pk=order_id)
    elif order.pk != order_id:
        raise ValueError(f"the order passed is {order.pk}, not {order_id}")
    if order.status not in ORDER_EMAILS:
        raise ValueError(f"order {order_id} is {order.status}; only final orders are notified")
    if not order.customer.email:
        logger.warning("order %s: customer %s has no email address, nothing sent", order_id, order.customer_id)
        return None
    kind, subject, template = ORDER_EMAILS[order.status]
    context = {
        "order": order,
        "lines": order.lines.select_related("product") if lines is None else lines,
        "customer": order.customer,
        "order_url": settings.SITE_URL + reverse("orders:detail", args=[order.pk]),
    }
    return outbox.queue_email(
        kind=kind,
        recipient=order.customer.email,
        user_id=order.customer_id,
        subject=subject.format(id=order.pk),
        body_text=render_to_string(f"orders/email/{template}.txt", context),
        body_html=render_to_string(f"orders/email/{template}.html", context),
        dedup_key=email_key(order.pk, order.status, order.replays),
        subject_object=f"orders.order:{order.pk}",
    )


def email_key(order_id: int, status: str, replays: int) -> str:
    """The outbox dedup key of the order's email about `status`: a replayed order may end again, a new message."""
    return f"order:{order_id}:{status}:{replays}"


def publish_unsent(order_id: int) -> bool:
    """Publish the final order's email again if its row still waits, never taken by a task; True if it did.

    For a process_order that finds its order already final: a copy delivered
    again because the one before could not acknowledge (its broker connection
    dropped, or Celery terminated it). That copy may have committed the order's
    end and then lost the publish of its email, made after the commit, to the
    same outage. A message sent twice is harmless: one send claims the row, the
    other skips it.
    """
    ended = Order.objects.filter(pk=order_id, status__in=list(ORDER_EMAILS)).values("status", "replays").first()
    if ended is None:
        return False
    return outbox.publish_if_waiting(email_key(order_id, ended["status"], ended["replays"]))
