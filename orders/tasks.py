"""Celery entry points for orders; each calls one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from core.base_task import ProjectTask
from orders.services import actions, pipeline


@shared_task(
    bind=True,
    name="orders.tasks.process_order",
    max_retries=8,
    retry_backoff=2,
    retry_backoff_max=settings.TASK_RETRY_BACKOFF_MAX,
    retry_jitter=True,
    soft_time_limit=90,
    time_limit=120,
    subject=("orders.Order", "order_id"),
    retry_with="orders.services.actions.retry_processing",
    cancel_with="orders.services.actions.cancel_order",
)
def process_order(self: ProjectTask, order_id: int) -> str:
    """Run the order pipeline (reserve, charge, ship, notify), resuming after the last finished step.

    An order that failed for good ends the task in FAILURE (OrderFailed), so the
    results admin, the failures page and the failure metrics count it.
    """
    outcome = self.call_service(pipeline.process_order, order_id)
    if outcome is pipeline.Outcome.FAILED:
        raise pipeline.OrderFailed.of(order_id)
    return outcome.value


@shared_task(name="orders.tasks.check_pending_orders", soft_time_limit=50, time_limit=60)
def check_pending_orders() -> int:
    """Re-enqueue orders that were saved but never processed, and orders whose lease expired."""
    return actions.requeue_stuck_orders()
