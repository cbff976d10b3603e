"""The weekly digest: each subscribed customer's orders of the ISO week that just ended, sent in chunks."""

from __future__ import annotations

import itertools
import logging
from datetime import date

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.template.loader import render_to_string
from django.utils import timezone

from core import dispatch
from core.dates import day_bounds, previous_iso_week
from notifications.models import EmailPreference, Notification
from notifications.services.bulk import batched, id_ranges
from notifications.services.preferences import marketing_headers, unsubscribe_url
from orders.services import history

logger = logging.getLogger(__name__)

Status = Notification.Status
Kind = Notification.Kind


def send_weekly_digest(*, today: date | None = None) -> int:
    """Queue a digest of last ISO week's orders for each subscribed customer who ordered, then send in chunks.

    Idempotent per customer and week (dedup_key), so running it twice sends nothing new.
    """
    monday, sunday = previous_iso_week(today or timezone.localdate())
    year, week, _ = monday.isocalendar()
    label = f"{year}-W{week:02d}"
    start, end = day_bounds(monday, sunday)
    unsubscribed = EmailPreference.objects.filter(user=OuterRef("customer"), unsubscribed_at__isnull=False)
    orders = (
        history.orders_placed_between(start, end)
        .filter(customer__is_active=True)
        .exclude(customer__email="")
        .filter(~Exists(unsubscribed))
        .order_by("customer_id", "created_at")
    )
    created_before = Notification.objects.filter(dedup_key__startswith=f"digest:{label}:").count()
    per_customer = (
        (customer, list(customer_orders))
        for customer, customer_orders in itertools.groupby(orders.iterator(chunk_size=2000), key=lambda o: o.customer)
    )
    for batch in batched(per_customer, 500):
        messages = []
        for customer, customer_orders in batch:
            unsubscribe = unsubscribe_url(customer.pk)
            context = {
                "customer": customer,
                "orders": customer_orders,
                "monday": monday,
                "sunday": sunday,
                "week": label,
                "unsubscribe_url": unsubscribe,
                "orders_url": settings.SITE_URL + "/orders/",
            }
            messages.append(
                Notification(
                    kind=Kind.DIGEST,
                    user_id=customer.pk,
                    recipient=customer.email,
                    subject=f"Your orders in week {week} ({monday:%d %b} to {sunday:%d %b})",
                    body_text=render_to_string("notifications/email/digest.txt", context),
                    body_html=render_to_string("notifications/email/digest.html", context),
                    headers=marketing_headers(unsubscribe),
                    dedup_key=f"digest:{label}:user:{customer.pk}",
                )
            )
        Notification.objects.bulk_create(messages, ignore_conflicts=True)
    rows = Notification.objects.filter(dedup_key__startswith=f"digest:{label}:")
    created = rows.count() - created_before
    for first, last in id_ranges(rows.filter(status=Status.QUEUED)):
        dispatch.send("notifications.tasks.send_digest_chunk", [first, last])
    logger.info("weekly digest %s: %s new messages", label, created)
    return created
