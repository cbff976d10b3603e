"""Holding an order while it is processed: the claim, the lease, the checkpoints, and how a step ends early.

A task claims an order by taking its lease (the task id and an expiry); every
step then proves the lease and records itself in `Order.step`, so a retry
resumes after the last finished step and a task that lost its order stops at
the next step boundary (Stopped). A step that fails for good raises StepFailed,
which the pipeline compensates.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from core.db import fetch_rows, instance_from_row
from orders import sql
from orders.models import Order, OrderEvent, OrderLine, Product

logger = logging.getLogger(__name__)

Status = Order.Status
Step = Order.Step


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


class StepFailed(Exception):
    """A permanent failure: compensate, then mark the order failed with this reason."""


def claim(order_id: int, task_id: str) -> tuple[Order, list[OrderLine]] | None:
    """Take the order's lease: pending, or processing with our own or an expired lease. None if someone else holds it.

    Records the attempt in the order's history and returns the order, with the
    customer fields its emails use, and its lines by product id, each with its
    product's SKU and name: one statement on PostgreSQL (orders.sql.CLAIM_ORDER),
    one transaction and a query of the lines with the ORM elsewhere.
    """
    now = timezone.now()
    claim = _claim_in_one_statement if sql.in_one_statement() else _claim_with_orm
    claimed = claim(order_id, task_id, now)
    if claimed is None:
        logger.info("order %s not claimed by task %s: final, missing, or leased to another task", order_id, task_id)
    return claimed


def _claim_in_one_statement(order_id: int, task_id: str, now: datetime) -> tuple[Order, list[OrderLine]] | None:
    rows = fetch_rows(
        sql.CLAIM_ORDER,
        {"order_id": order_id, "task_id": task_id, "now": now, "lease_expires_at": now + settings.ORDER_LEASE_TIMEOUT},
    )
    if not rows:
        return None
    order = instance_from_row(Order, rows[0])
    customer = _prefixed(rows[0], "customer__")
    order.customer = instance_from_row(Order.customer.field.related_model, {"id": order.customer_id, **customer})
    lines = []
    for row in rows:
        if row["line__id"] is None:  # an order without lines: the LEFT JOIN's one row
            continue
        line = instance_from_row(OrderLine, {**_prefixed(row, "line__"), "order_id": order.pk})
        line.product = instance_from_row(Product, {"id": line.product_id, **_prefixed(row, "product__")})
        lines.append(line)
    return order, lines


def _prefixed(row: dict[str, object], prefix: str) -> dict[str, object]:
    """The row's columns named `prefix`..., without the prefix."""
    return {name.removeprefix(prefix): value for name, value in row.items() if name.startswith(prefix)}


def _claim_with_orm(order_id: int, task_id: str, now: datetime) -> tuple[Order, list[OrderLine]] | None:
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
    return order, list(order.lines.select_related("product").order_by("product_id"))


def lock_for_step(order: Order, task_id: str) -> Order:
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


@dataclass(frozen=True)
class Checkpoint:
    """A step about to be recorded: the step it moves on from, and the order's fields that change with it."""

    step: Step
    previous: Step
    now: datetime
    changes: dict[str, object]

    def sql_params(self) -> dict[str, object]:
        """The parameters a one-statement checkpoint (orders.sql) takes besides the order id and the task id."""
        return {
            "previous": self.previous,
            "step": self.step,
            "now": self.now,
            "lease_expires_at": self.changes.get("lease_expires_at"),
        }


def checkpoint(order: Order, step: Step, *, after: Step | None = None, **fields: object) -> Checkpoint:
    """The checkpoint for `step`, renewing the lease when due; `after` is the step before when it is not the previous one."""
    now = timezone.now()
    changes = {"step": step, "updated_at": now, **lease_renewal(order, now), **fields}
    return Checkpoint(step=step, previous=step_before(step) if after is None else after, now=now, changes=changes)


def checkpointed(order: Order, task_id: str, point: Checkpoint, *, written: bool) -> bool:
    """After the write of `point`: True when it was written (the copy in hand is updated), else as not_advanced."""
    if not written:
        return not_advanced(order, task_id, point.step, point.previous)
    for name, value in point.changes.items():
        setattr(order, name, value)
    return True


# The forward steps prove the lease and record the checkpoint in one conditional
# UPDATE instead of SELECT ... FOR UPDATE followed by an UPDATE: the UPDATE takes
# the same row lock (a cancel waits for the step's transaction, and the other way
# round). Only when it matches nothing is the row read, to find out why.
def advance(order: Order, task_id: str, step: Step, *, after: Step | None = None, **fields: object) -> bool:
    """Record `step` as finished and renew the lease, while the order is ours and at the step before.

    `after` is that step before when it is not the previous one: the steps in
    between were done in the same transaction. False when a duplicate delivery of
    this task finished the step meanwhile (the caller then skips the step's side
    effects). Raises Stopped when the order was cancelled or its lease went to
    another task.
    """
    point = checkpoint(order, step, after=after, **fields)
    written = _leased(order, task_id).filter(step=point.previous).update(**point.changes) > 0
    return checkpointed(order, task_id, point, written=written)


def not_advanced(order: Order, task_id: str, step: Step, previous: Step) -> bool:
    """Why a checkpoint from `previous` to `step` matched nothing: False when a duplicate did it, else raises Stopped."""
    current = Order.objects.get(pk=order.pk)
    _stop_unless_leased(current, task_id)
    if not current.step_done(step):
        raise Stopped(Outcome.STOPPED, f"the order is at step {current.step!r}, not {previous!r}")
    order.step, order.tracking_number = current.step, current.tracking_number
    return False


_STEPS = list(Step)


def step_before(step: Step) -> Step:
    return _STEPS[_STEPS.index(step) - 1]


def lease_renewal(order: Order, now: datetime) -> dict[str, object]:
    """The new lease expiry, once less than half of the lease is left; nothing before that.

    The lease expiry is indexed (the sweep looks for expired ones), so renewing it
    at every step made every checkpoint a non-HOT update: a new entry in each of
    the table's indexes. A checkpoint that only moves `step` stays on its page.
    Half a lease (a minute by default) is far longer than any step.
    """
    if order.lease_expires_at and order.lease_expires_at - now > settings.ORDER_LEASE_TIMEOUT / 2:
        return {}
    return {"lease_expires_at": now + settings.ORDER_LEASE_TIMEOUT}


def renew_lease(order: Order, task_id: str) -> None:
    """Prove the lease (renewing it when due) without finishing a step; takes the row lock inside a transaction."""
    renewal = lease_renewal(order, timezone.now())
    leased = _leased(order, task_id)
    if not (leased.update(**renewal) if renewal else leased.select_for_update().exists()):
        stop_for_lost_lease(order, task_id)
    order.lease_expires_at = renewal.get("lease_expires_at", order.lease_expires_at)


def stop_for_lost_lease(order: Order, task_id: str) -> NoReturn:
    """Raise Stopped with why the order is no longer this task's (cancelled, or leased to another)."""
    _stop_unless_leased(Order.objects.get(pk=order.pk), task_id)
    raise Stopped(Outcome.STOPPED, "the lease could not be renewed")


def hold_lease_for_retry(order_id: int, task_id: str, retry_in: int, error: str) -> None:
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
