"""orders/sql.py: each statement parses against the real schema, writes every column, and matches the ORM path."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from orders import sql
from orders.models import Order, OrderEvent, OrderLine
from orders.services import lease
from tests.orders.helpers import place, product

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
    first, second = place(customer, (product(), 1)), place(customer, (product(), 1))
    with django_assert_num_queries(1):
        claimed_in_one = lease.claim(first.pk, "task-1")
        assert claimed_in_one.customer.email == customer.email  # loaded with the claim, no query of its own
    monkeypatch.setattr(sql, "in_one_statement", lambda: False)
    claimed_by_orm = lease.claim(second.pk, "task-1")

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
