"""The order pipeline, called as the task calls it (pipeline.process_order), against real PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from core.base_task import Attempt
from orders.models import Order, OrderEvent, Payment
from orders.services import actions, lease, payments, pipeline
from tests.orders.helpers import fault, ledger, place, product, stock_of

# Service tests: bin/test runs them on PostgreSQL and again on SQLite, the embedded default.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded_db]


@pytest.fixture(autouse=True)
def _no_latency(settings) -> None:
    settings.PAYMENT_SANDBOX_LATENCY_MS = 0


def test_it_runs_every_step_and_completes_the_order(customer) -> None:
    mug = product(stock=5, price="12.50")
    order = place(customer, (mug, 2))

    outcome = pipeline.process_order(order.pk, attempt=Attempt("task-1"))

    order.refresh_from_db()
    assert outcome == pipeline.Outcome.COMPLETED
    assert (order.status, order.step) == ("completed", "notified")
    assert order.tracking_number.startswith("SBX")
    assert (order.lease_owner, order.lease_expires_at) == ("", None)
    assert stock_of(mug) == 3
    [charge] = ledger(order)
    assert charge.amount == order.total == mug.price * 2
    payment = order.payments.get()
    assert (payment.kind, payment.status, payment.provider_reference) == (
        "charge",
        "succeeded",
        f"sbx_charge_{charge.pk}",
    )
    assert order.events.filter(kind="attempt", task_id="task-1").exists()


def test_a_finished_order_is_left_alone_when_delivered_again(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    pipeline.process_order(order.pk, attempt=Attempt("task-1"))

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.SKIPPED
    assert pipeline.process_order(order.pk, attempt=Attempt("task-2")) == pipeline.Outcome.SKIPPED
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 4


def test_two_copies_of_the_same_task_running_at_once_reserve_the_stock_once(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 2))
    lease.claim(order.pk, "task-1")
    first_copy, second_copy = Order.objects.get(pk=order.pk), Order.objects.get(pk=order.pk)
    lines = list(order.lines.all())

    pipeline.reserve_stock(first_copy, lines, "task-1")
    pipeline.reserve_stock(second_copy, lines, "task-1")  # it read step="" before the first committed

    assert stock_of(mug) == 3
    assert second_copy.step == "reserved"


def test_another_task_leaves_an_order_alone_while_its_lease_is_live(customer) -> None:
    order = place(customer, (product(), 1))
    Order.objects.filter(pk=order.pk).update(
        status="processing", lease_owner="task-1", lease_expires_at=timezone.now() + timedelta(minutes=1)
    )

    assert pipeline.process_order(order.pk, attempt=Attempt("task-2")) == pipeline.Outcome.SKIPPED
    order.refresh_from_db()
    assert (order.status, order.lease_owner, order.step) == ("processing", "task-1", "")


def test_an_expired_lease_is_taken_over_and_resumed_after_the_last_finished_step(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 2))
    fault(order, "ship", "transient")
    with pytest.raises(pipeline.TransientOrderError):
        pipeline.process_order(order.pk, attempt=Attempt("task-1"))  # reserved and charged, then the carrier timed out
    order.refresh_from_db()
    assert order.step == "charged"
    Order.objects.filter(pk=order.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert pipeline.process_order(order.pk, attempt=Attempt("task-2")) == pipeline.Outcome.COMPLETED
    assert len(ledger(order)) == 1
    assert stock_of(mug) == 3


def test_a_transient_gateway_error_is_raised_for_a_retry_that_keeps_the_lease(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    fault(order, "charge", "transient", times=2)

    for _attempt in range(2):
        with pytest.raises(pipeline.TransientOrderError, match="timed out"):
            pipeline.process_order(order.pk, attempt=Attempt("task-1", retry_in=30))
        order.refresh_from_db()
        assert order.lease_expires_at > timezone.now() + timedelta(seconds=30)
        assert pipeline.process_order(order.pk, attempt=Attempt("sweep-task")) == pipeline.Outcome.SKIPPED

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.COMPLETED
    assert len(ledger(order)) == 1
    assert order.events.filter(kind="retry").count() == 2
    payment = order.payments.get()
    assert (payment.status, payment.attempts) == ("succeeded", 3)


def test_a_decline_fails_the_order_with_the_reason_and_releases_the_stock(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 3))
    fault(order, "charge", "decline")

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.FAILED

    order.refresh_from_db()
    assert order.status == "failed"
    assert "declined" in order.failure_reason
    assert stock_of(mug) == 5
    assert ledger(order) == []
    assert order.payments.get().status == "failed"


def test_a_failure_after_the_charge_refunds_it_and_releases_the_stock(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 2))
    fault(order, "ship", "decline")

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.FAILED

    order.refresh_from_db()
    assert order.status == "failed"
    assert order.failure_reason.startswith("Shipping refused")
    assert stock_of(mug) == 5
    [charge], [refund] = ledger(order, "charge"), ledger(order, "refund")
    assert refund.charge == charge and refund.amount == charge.amount
    assert sorted(order.payments.values_list("kind", "status")) == [("charge", "succeeded"), ("refund", "succeeded")]


def test_a_refund_that_times_out_is_resumed_by_the_next_attempt_without_redoing_anything(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 2))
    fault(order, "ship", "decline")
    fault(order, "refund", "transient")

    with pytest.raises(pipeline.TransientOrderError):
        pipeline.process_order(order.pk, attempt=Attempt("task-1"))
    order.refresh_from_db()
    assert order.is_compensating
    assert stock_of(mug) == 3  # still reserved until the refund went through

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.FAILED
    assert len(ledger(order, "charge")) == len(ledger(order, "refund")) == 1
    assert stock_of(mug) == 5


def test_transient_errors_on_the_last_attempt_fail_the_order_after_compensation(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    fault(order, "ship", "transient", times=5)

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1", is_last=True)) == pipeline.Outcome.FAILED

    order.refresh_from_db()
    assert order.failure_reason.startswith("Gave up after 1 attempts")
    assert len(ledger(order, "refund")) == 1
    assert stock_of(mug) == 5


def test_an_order_that_keeps_getting_claimed_is_failed_at_the_attempt_limit(customer, settings) -> None:
    settings.ORDER_MAX_ATTEMPTS = 3
    order = place(customer, (product(), 1))
    fault(order, "charge", "transient", times=10)
    for _ in range(2):
        with pytest.raises(pipeline.TransientOrderError):
            pipeline.process_order(order.pk, attempt=Attempt("task-1"))

    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.FAILED
    order.refresh_from_db()
    assert order.failure_reason.startswith("Gave up after 3 attempts")


def test_two_orders_for_the_last_unit_one_completes_and_the_other_fails_before_any_charge(customer) -> None:
    last = product(stock=1)
    first, second = place(customer, (last, 1)), place(customer, (last, 1))

    assert pipeline.process_order(first.pk, attempt=Attempt("task-1")) == pipeline.Outcome.COMPLETED
    assert pipeline.process_order(second.pk, attempt=Attempt("task-2")) == pipeline.Outcome.FAILED

    second.refresh_from_db()
    assert second.failure_reason.startswith(f"Out of stock: not enough {last.sku}")
    assert ledger(second) == [] and not second.payments.exists()
    assert stock_of(last) == 0


def test_cancelling_a_pending_order_needs_no_worker(customer) -> None:
    order = place(customer, (product(), 1))

    actions.cancel_order(order.pk, customer_id=customer.pk)

    order.refresh_from_db()
    assert order.status == "cancelled"
    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.SKIPPED


def test_cancelling_after_the_reservation_releases_the_stock_and_stops_the_task(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 2))
    fault(order, "charge", "transient")
    with pytest.raises(pipeline.TransientOrderError):
        pipeline.process_order(order.pk, attempt=Attempt("task-1"))
    # The transient error struck before the gateway call recorded anything; drop the intent too,
    # to stand for a task that is between its reservation and its charge.
    Payment.objects.filter(order=order).delete()
    assert stock_of(mug) == 3

    actions.cancel_order(order.pk, customer_id=customer.pk)

    assert stock_of(mug) == 5
    assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.SKIPPED
    order.refresh_from_db()
    assert order.status == "cancelled" and ledger(order) == []


def test_a_running_task_stops_at_the_next_step_boundary_when_the_order_is_cancelled(customer) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 2))
    lease.claim(order.pk, "task-1")
    pipeline.reserve_stock(order, list(order.lines.all()), "task-1")
    actions.cancel_order(order.pk, customer_id=customer.pk)

    with pytest.raises(lease.Stopped):
        payments.charge(order, "task-1")

    assert ledger(order) == [] and not order.payments.exists()
    assert stock_of(mug) == 5


def test_cancelling_is_refused_once_the_payment_is_under_way(customer) -> None:
    order = place(customer, (product(), 1))
    fault(order, "charge", "transient")
    with pytest.raises(pipeline.TransientOrderError):
        pipeline.process_order(
            order.pk, attempt=Attempt("task-1")
        )  # the intent is recorded; the gateway call timed out

    with pytest.raises(actions.CancelRefused, match="payment has already been taken"):
        actions.cancel_order(order.pk, customer_id=customer.pk)


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_cancelling_a_finished_order_is_refused_with_the_reason(customer, status: str) -> None:
    order = place(customer, (product(), 1))
    Order.objects.filter(pk=order.pk).update(status=status)

    with pytest.raises(actions.CancelRefused, match=f"already {status}"):
        actions.cancel_order(order.pk, customer_id=customer.pk)


def test_a_customer_cannot_cancel_someone_elses_order(customer, staff) -> None:
    order = place(staff, (product(), 1))

    with pytest.raises(Order.DoesNotExist):
        actions.cancel_order(order.pk, customer_id=customer.pk)


def test_replaying_a_failed_order_starts_over_with_fresh_payment_keys(customer, staff) -> None:
    mug = product(stock=5)
    order = place(customer, (mug, 1))
    fault(order, "charge", "decline")
    pipeline.process_order(order.pk, attempt=Attempt("task-1"))

    assert actions.retry_failed_order(order.pk, actor_id=staff.pk) is True
    assert actions.retry_failed_order(order.pk, actor_id=staff.pk) is False  # no longer failed
    assert pipeline.process_order(order.pk, attempt=Attempt("task-2")) == pipeline.Outcome.COMPLETED

    order.refresh_from_db()
    assert (order.status, order.replays, order.failure_reason) == ("completed", 1, "")
    assert sorted(order.payments.values_list("idempotency_key", "status")) == [
        (f"order:{order.pk}:charge:0", "failed"),
        (f"order:{order.pk}:charge:1", "succeeded"),
    ]
    assert order.events.filter(kind="replayed", actor=staff).exists()


def test_the_sweep_resends_old_pending_orders_and_expired_leases_once_per_threshold(customer, settings, broker) -> None:
    settings.ORDER_REQUEUE_AFTER = timedelta(minutes=2)
    old = timezone.now() - timedelta(minutes=5)
    place(customer, (product(), 1))  # fresh: not old enough to be swept
    pending = place(customer, (product(), 1))
    expired = place(customer, (product(), 1))
    live = place(customer, (product(), 1))
    Order.objects.filter(pk__in=[pending.pk, expired.pk, live.pk]).update(created_at=old)
    Order.objects.filter(pk=expired.pk).update(
        status="processing", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    Order.objects.filter(pk=live.pk).update(status="processing", lease_expires_at=timezone.now() + timedelta(minutes=1))

    assert actions.requeue_stuck_orders() == 2
    assert actions.requeue_stuck_orders() == 0  # re-sent moments ago

    messages = [json.loads(raw) for raw in broker.lrange("default", 0, -1)]
    assert {m["headers"]["task"] for m in messages} == {"orders.tasks.process_order"}
    assert sorted(m["headers"]["argsrepr"] for m in messages) == sorted([f"[{pending.pk}]", f"[{expired.pk}]"])
    assert OrderEvent.objects.filter(kind="requeued").count() == 2


def test_a_step_renews_the_lease_only_once_less_than_half_is_left(customer, settings) -> None:
    settings.ORDER_LEASE_TIMEOUT = timedelta(minutes=2)
    order = place(customer, (product(), 1))
    claimed, lines = lease.claim(order.pk, "task-1")
    first_lease = claimed.lease_expires_at

    pipeline.reserve_stock(claimed, lines, "task-1")
    reserved = Order.objects.get(pk=order.pk)
    assert (reserved.step, reserved.lease_expires_at) == ("reserved", first_lease)  # plenty left: untouched

    nearly_gone = timezone.now() + timedelta(seconds=30)
    Order.objects.filter(pk=order.pk).update(lease_expires_at=nearly_gone)
    claimed.lease_expires_at = nearly_gone
    payments.charge(claimed, "task-1")
    charged = Order.objects.get(pk=order.pk)
    assert charged.step == "charged"
    assert charged.lease_expires_at > timezone.now() + timedelta(seconds=90)


def test_a_claim_takes_the_lease_records_the_attempt_and_returns_the_order_with_its_customer(customer) -> None:
    order = place(customer, (product(), 1))

    claimed, lines = lease.claim(order.pk, "task-1")

    saved = Order.objects.get(pk=order.pk)
    for field in Order._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(saved, field.attname), field.name
    assert claimed.customer.email == customer.email
    [line] = order.lines.select_related("product")
    assert [(got.pk, got.product_id, got.quantity, got.unit_price, got.product.name) for got in lines] == [
        (line.pk, line.product_id, line.quantity, line.unit_price, line.product.name)
    ]
    assert (saved.status, saved.lease_owner, saved.attempts) == ("processing", "task-1", 1)
    assert not claimed._state.adding
    events = list(OrderEvent.objects.filter(order=order).values_list("kind", "task_id", "message"))
    assert events == [("attempt", "task-1", "attempt 1")]

    assert lease.claim(order.pk, "task-2") is None  # leased to task-1
    assert OrderEvent.objects.filter(order=order).count() == 1

    Order.objects.filter(pk=order.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    again, _ = lease.claim(order.pk, "task-2")
    assert (again.lease_owner, again.attempts) == ("task-2", 2)
    assert OrderEvent.objects.filter(order=order).latest("id").message == "attempt 2"


def test_a_final_order_delivered_again_publishes_its_email_again_only_while_no_task_has_taken_it(customer) -> None:
    from notifications.models import Notification
    from notifications.services import outbox
    from orders.services import emails

    pending = place(customer, (product(), 1))
    assert emails.publish_unsent(pending.pk) is False  # not final: nothing to tell yet
    order = place(customer, (product(), 1))
    pipeline.process_order(order.pk, attempt=Attempt("task-1"))
    email = Notification.objects.get(subject_object=f"orders.order:{order.pk}")

    assert emails.publish_unsent(order.pk) is True  # queued, untaken: its publish may have been lost
    assert outbox.claim(Notification.objects.filter(pk=email.pk), "send-1") == 1
    assert emails.publish_unsent(order.pk) is False  # being sent, under a live lease
    outbox.finish([email.pk], "send-1", Notification.Status.SENT)
    assert emails.publish_unsent(order.pk) is False
