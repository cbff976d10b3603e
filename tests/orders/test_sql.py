"""orders/sql.py: each statement parses against the real schema, writes every column, and matches the ORM path."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from orders import sql
from orders.models import Order, OrderEvent, OrderLine, Payment
from orders.services import actions, lease, payments, pipeline
from orders.services.lease import Outcome, StepFailed, Stopped
from tests.orders.helpers import place, product, stock_of

pytestmark = pytest.mark.django_db

NOW = timezone.now()
PARAMETERS = {
    "INSERT_ORDER": {
        "skus": ["MUG-001"],
        "quantities": [1],
        "line_count": 1,
        "customer_id": 1,
        "now": NOW,
        "idempotency_key": None,
        "request_fingerprint": "",
    },
    "CLAIM_ORDER": {"order_id": 1, "task_id": "t", "now": NOW, "lease_expires_at": NOW},
    "RESERVE_STOCK": {
        "order_id": 1,
        "task_id": "t",
        "previous": "",
        "step": "reserved",
        "now": NOW,
        "lease_expires_at": None,
        "product_ids": [1, 2],
        "quantities": [1, 2],
    },
    "OPEN_CHARGE": {
        "order_id": 1,
        "task_id": "t",
        "lease_expires_at": None,
        "amount": "10.00",
        "idempotency_key": "k",
        "now": NOW,
    },
    "RECORD_CHARGE": {
        "payment_id": 1,
        "reference": "r",
        "task_id": "t",
        "now": NOW,
        "order_id": 1,
        "previous": "reserved",
        "step": "charged",
        "lease_expires_at": None,
    },
}


def _inserted_columns(statement: str, table: str) -> set[str]:
    match = re.search(rf"INSERT INTO {table} \(([^)]*)\)", statement)
    assert match, f"no INSERT INTO {table}"
    return {column.strip() for column in match.group(1).split(",")}


def _columns(model: type) -> set[str]:
    return {field.column for field in model._meta.concrete_fields if not field.primary_key}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_each_statement_is_planned_by_postgresql_against_the_real_tables(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {getattr(sql, name)}", PARAMETERS[name])
        assert cursor.fetchall()


def test_the_statements_write_every_column_of_the_rows_they_insert() -> None:
    # A field added to one of these models must be added to the statement too:
    # Django sets no database defaults, so a missing column would fail or be NULL.
    assert _inserted_columns(sql.INSERT_ORDER, "orders_order") == _columns(Order)
    assert _inserted_columns(sql.INSERT_ORDER, "orders_orderline") == _columns(OrderLine)
    assert _inserted_columns(sql.CLAIM_ORDER, "orders_orderevent") == _columns(OrderEvent)
    assert _inserted_columns(sql.OPEN_CHARGE, "orders_payment") == _columns(Payment)


def _row(model: type, pk: int, ignore: set[str]) -> dict:
    instance = model.objects.get(pk=pk)
    return {f.attname: getattr(instance, f.attname) for f in model._meta.concrete_fields if f.attname not in ignore}


def test_placing_in_one_statement_saves_what_the_orm_path_saves(customer, monkeypatch) -> None:
    mug, pot = product(stock=5, price="12.50"), product(stock=5, price="3.10")
    one_statement = place(customer, (mug, 2), (pot, 1), key="a")
    monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    orm = place(customer, (mug, 2), (pot, 1), key="b")

    varying = {"id", "created_at", "updated_at", "idempotency_key"}
    assert _row(Order, one_statement.pk, varying) == _row(Order, orm.pk, varying)
    assert one_statement.total == orm.total == Order.objects.get(pk=orm.pk).total
    lines = [
        [(line.product_id, line.quantity, line.unit_price) for line in OrderLine.objects.filter(order=order)]
        for order in (one_statement, orm)
    ]
    assert lines[0] == lines[1]


def test_claiming_in_one_statement_does_what_the_orm_path_does_in_one_query(
    customer, monkeypatch, django_assert_num_queries
) -> None:
    # Two lines each, placed with the higher product id first: the claim returns them by product id.
    mug, cup = product(), product()
    first, second = place(customer, (cup, 2), (mug, 1)), place(customer, (cup, 2), (mug, 1))
    with django_assert_num_queries(1):
        claimed_in_one, lines_in_one = lease.claim(first.pk, "task-1")
        # Loaded with the claim, no query of their own.
        assert claimed_in_one.customer.email == customer.email
        assert [(line.product.sku, line.product.name) for line in lines_in_one] == [(p.sku, p.name) for p in (mug, cup)]
    monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    claimed_by_orm, lines_by_orm = lease.claim(second.pk, "task-1")

    def described(lines: list[OrderLine]) -> list[tuple]:
        return [
            (line.product_id, line.quantity, line.unit_price, line.product.sku, line.product.name) for line in lines
        ]

    assert described(lines_in_one) == described(lines_by_orm) == described(first.lines.order_by("product_id"))
    assert [line.order_id for line in lines_in_one] == [first.pk, first.pk]
    assert not any(line._state.adding for line in lines_in_one)

    varying = {"id", "created_at", "updated_at", "idempotency_key", "request_fingerprint", "lease_expires_at"}
    assert _row(Order, first.pk, varying) == _row(Order, second.pk, varying)
    for claimed in (claimed_in_one, claimed_by_orm):
        assert _row(Order, claimed.pk, set()) == {
            f.attname: getattr(claimed, f.attname) for f in Order._meta.concrete_fields
        }
        assert claimed.lease_expires_at - timezone.now() > timedelta(seconds=60)
        assert (claimed.customer.username, claimed.customer.first_name) == (customer.username, customer.first_name)
    events = [
        list(OrderEvent.objects.filter(order=o).values_list("kind", "task_id", "message", "actor_id"))
        for o in (first, second)
    ]
    assert events[0] == events[1] == [("attempt", "task-1", "attempt 1", None)]


def _claimed(order: Order, task_id: str = "task-1") -> tuple[Order, list[OrderLine]]:
    """The order and its lines as the pipeline holds them after its claim."""
    claimed = lease.claim(order.pk, task_id)
    assert claimed is not None
    return claimed


@pytest.fixture(params=["one statement", "orm"])
def path(request, monkeypatch) -> str:
    """Each reservation test runs on the statement and on the ORM path (SQLite's) beside it."""
    if request.param == "orm":
        monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    return request.param


def test_reserving_in_one_statement_does_what_the_orm_path_does_in_one_query(
    customer, monkeypatch, django_assert_num_queries
) -> None:
    mug, pot = product(stock=10), product(stock=10)
    first, second = place(customer, (mug, 2), (pot, 3)), place(customer, (pot, 1), (mug, 1))
    one_statement, lines = _claimed(first)
    with django_assert_num_queries(1):
        pipeline.reserve_stock(one_statement, lines, "task-1")
    monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    orm, lines = _claimed(second)
    pipeline.reserve_stock(orm, lines, "task-1")

    assert (stock_of(mug), stock_of(pot)) == (10 - 2 - 1, 10 - 3 - 1)
    varying = {"id", "created_at", "updated_at", "idempotency_key", "request_fingerprint", "lease_expires_at", "total"}
    assert _row(Order, first.pk, varying) == _row(Order, second.pk, varying)
    for reserved in (one_statement, orm):
        assert reserved.step == "reserved"
        assert _row(Order, reserved.pk, set()) == {
            f.attname: getattr(reserved, f.attname) for f in Order._meta.concrete_fields
        }


def test_a_short_product_fails_the_reservation_with_its_sku_and_nothing_is_taken(customer, path: str) -> None:
    mug, pot = product(stock=5), product(stock=2)
    order, lines = _claimed(place(customer, (mug, 2), (pot, 2)))
    pot.stock = 1
    pot.save(update_fields=["stock"])  # sold meanwhile: placing read 2, the reservation finds 1

    with pytest.raises(StepFailed, match=rf"^Out of stock: not enough {pot.sku} left for 2\.$"):
        pipeline.reserve_stock(order, lines, "task-1")

    assert (stock_of(mug), stock_of(pot)) == (5, 1)
    assert Order.objects.get(pk=order.pk).step == ""


def test_a_reservation_whose_lease_went_to_another_task_stops_and_takes_nothing(customer, path: str) -> None:
    mug = product(stock=5)
    order, lines = _claimed(place(customer, (mug, 2)))
    Order.objects.filter(pk=order.pk).update(lease_owner="task-2")

    with pytest.raises(Stopped, match="lease lost to task-2") as stopped:
        pipeline.reserve_stock(order, lines, "task-1")

    assert stopped.value.outcome == Outcome.STOPPED
    assert (stock_of(mug), Order.objects.get(pk=order.pk).step) == (5, "")


def test_a_duplicate_reservation_of_the_same_task_takes_the_stock_once(customer, path: str) -> None:
    mug = product(stock=5)
    order, lines = _claimed(place(customer, (mug, 2)))
    pipeline.reserve_stock(order, lines, "task-1")
    duplicate, lines = _claimed(Order.objects.get(pk=order.pk))  # the same task id, delivered again

    pipeline.reserve_stock(duplicate, lines, "task-1")

    assert (stock_of(mug), duplicate.step) == (3, "reserved")


@pytest.mark.django_db(transaction=True)
def test_a_cancel_holding_the_order_makes_the_reservation_wait_then_stop_without_a_deadlock(
    customer, path: str
) -> None:
    mug = product(stock=5)
    order, lines = _claimed(place(customer, (mug, 2)))
    locked, finished = threading.Event(), []

    def cancel() -> None:
        # A cancel's transaction: the order row first, then (were it reserved) its products.
        try:
            with transaction.atomic():
                Order.objects.select_for_update().get(pk=order.pk)
                locked.set()
                time.sleep(0.5)  # the reservation arrives meanwhile and must wait for the row
                actions.cancel_order(order.pk)
            finished.append("cancelled")
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    assert locked.wait(10)
    with pytest.raises(Stopped) as stopped:
        pipeline.reserve_stock(order, lines, "task-1")
    canceller.join(10)

    assert finished == ["cancelled"]
    assert stopped.value.outcome == Outcome.CANCELLED
    assert (stock_of(mug), Order.objects.get(pk=order.pk).status) == (5, "cancelled")


def _charged(order: Order, task_id: str = "task-1") -> tuple[Order, Payment]:
    """The order as the pipeline holds it once its stock is reserved and its charge intent open."""
    claimed, lines = _claimed(order, task_id)
    pipeline.reserve_stock(claimed, lines, task_id)
    return claimed, payments.open_charge(claimed, task_id, payments.charge_key(claimed))


def test_recording_a_charge_in_one_statement_writes_what_the_orm_path_writes(
    customer, monkeypatch, django_assert_num_queries
) -> None:
    first, second = place(customer, (product(), 1)), place(customer, (product(), 1))
    order, intent = _charged(first)
    with django_assert_num_queries(1):
        payments.record_charge(order, intent, "task-1", "ref-1")
    monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    orm_order, orm_intent = _charged(second)
    payments.record_charge(orm_order, orm_intent, "task-1", "ref-1")

    varying = {"id", "order_id", "created_at", "updated_at", "idempotency_key"}
    assert _row(Payment, intent.pk, varying) == _row(Payment, orm_intent.pk, varying)
    assert _row(Payment, intent.pk, set()) == {
        f.attname: getattr(intent, f.attname) for f in Payment._meta.concrete_fields
    }
    varying |= {"customer_id", "request_fingerprint", "lease_expires_at", "total"}
    varying.discard("order_id")
    assert _row(Order, order.pk, varying) == _row(Order, orm_order.pk, varying)
    assert _row(Order, order.pk, set()) == {f.attname: getattr(order, f.attname) for f in Order._meta.concrete_fields}
    assert (order.step, intent.status, intent.provider_reference, intent.attempts) == (
        "charged",
        "succeeded",
        "ref-1",
        1,
    )


def test_a_charge_recorded_after_the_lease_went_to_another_task_is_kept_and_the_task_stops(customer, path: str) -> None:
    order, intent = _charged(place(customer, (product(), 1)))
    Order.objects.filter(pk=order.pk).update(lease_owner="task-2")  # a sweep's task took the order over

    with pytest.raises(Stopped):
        payments.record_charge(order, intent, "task-1", "ref-1")
    intent.refresh_from_db()
    assert (intent.status, intent.provider_reference) == ("succeeded", "ref-1")  # what the gateway did stands
    assert Order.objects.get(pk=order.pk).step == "reserved"


def test_a_charge_recorded_twice_by_the_same_task_moves_the_checkpoint_once(customer, path: str) -> None:
    order, intent = _charged(place(customer, (product(), 1)))
    payments.record_charge(order, intent, "task-1", "ref-1")
    copy = Order.objects.get(pk=order.pk)
    copy.step = "reserved"  # as a duplicate delivery holding an older copy would have it
    payments.record_charge(copy, intent, "task-1", "ref-1")
    assert (copy.step, Order.objects.get(pk=order.pk).step) == ("charged", "charged")


def _reserved(order: Order, task_id: str = "task-1") -> Order:
    claimed, lines = _claimed(order, task_id)
    pipeline.reserve_stock(claimed, lines, task_id)
    return claimed


def test_opening_a_charge_in_one_statement_writes_what_the_orm_path_writes(
    customer, monkeypatch, django_assert_num_queries
) -> None:
    first, second = _reserved(place(customer, (product(), 2))), _reserved(place(customer, (product(), 2)))
    with django_assert_num_queries(1):
        intent = payments.open_charge(first, "task-1", payments.charge_key(first))
    monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    orm_intent = payments.open_charge(second, "task-1", payments.charge_key(second))

    varying = {"id", "order_id", "created_at", "updated_at", "idempotency_key"}
    assert _row(Payment, intent.pk, varying) == _row(Payment, orm_intent.pk, varying)
    assert _row(Payment, intent.pk, set()) == {
        f.attname: getattr(intent, f.attname) for f in Payment._meta.concrete_fields
    }
    assert (intent.order_id, intent.idempotency_key, intent.amount) == (
        first.pk,
        f"order:{first.pk}:charge:0",
        first.total,
    )
    assert (intent.status, intent.attempts, intent.task_id) == ("pending", 0, "task-1")


def test_a_second_attempt_finds_the_first_attempts_intent(customer, path: str) -> None:
    order = _reserved(place(customer, (product(), 1)))
    first = payments.open_charge(order, "task-1", payments.charge_key(order))
    payments.record_charge(order, first, "task-1", "ref-1")
    again = payments.open_charge(order, "task-1", payments.charge_key(order))
    assert (again.pk, again.status, again.provider_reference) == (first.pk, "succeeded", "ref-1")
    assert Payment.objects.filter(order=order).count() == 1


def test_opening_a_charge_renews_a_lease_that_is_due(customer, path: str) -> None:
    order = _reserved(place(customer, (product(), 1)))
    soon = timezone.now() + timedelta(seconds=5)
    Order.objects.filter(pk=order.pk).update(lease_expires_at=soon)
    order.lease_expires_at = soon
    payments.open_charge(order, "task-1", payments.charge_key(order))
    renewed = Order.objects.get(pk=order.pk).lease_expires_at
    assert renewed == order.lease_expires_at and renewed - timezone.now() > timedelta(seconds=60)


@pytest.mark.parametrize(
    ("change", "outcome"), [({"lease_owner": "task-2"}, "stopped"), ({"status": "cancelled"}, "cancelled")]
)
def test_no_intent_is_opened_for_an_order_no_longer_ours(customer, path: str, change: dict, outcome: str) -> None:
    order = _reserved(place(customer, (product(), 1)))
    Order.objects.filter(pk=order.pk).update(**change)
    with pytest.raises(Stopped) as stopped:
        payments.open_charge(order, "task-1", payments.charge_key(order))
    assert stopped.value.outcome == outcome
    assert not Payment.objects.filter(order=order).exists()
