"""Notifications: the call points other apps use to tell customers things."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def notify_order_status(order_id: int) -> None:
    """Tell the customer about their order's new status (completed, failed or cancelled).

    The orders pipeline calls this inside its transaction. The email outbox that
    renders and sends the message is the notifications issue's work; until it
    lands, this call point records nothing and only logs.
    """
    logger.info("order %s: customer notification pending the notifications outbox", order_id)
