"""Which commits wait for the disk: core.db's two switches, and the order pipeline and its email using them.

PostgreSQL only (synchronous_commit is PostgreSQL's); on SQLite both switches do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import OperationalError, connection, connections, transaction

from core.base_task import Attempt
from core.db import commits_not_waiting_for_disk, wait_for_disk_on_commit
from core.interruptions import SoftTimeLimitExceeded
from notifications.models import Notification
from notifications.services import outbox
from orders.services import pipeline
from tests.orders.helpers import place, product

pytestmark = pytest.mark.django_db(transaction=True)


def setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def test_inside_commits_do_not_wait_and_the_session_gets_its_setting_back_after_and_after_an_error() -> None:
    before = setting()
    assert before == "on"
    with commits_not_waiting_for_disk():
        assert setting() == "off"
    assert setting() == before
    with pytest.raises(ValueError, match="a step failed"), commits_not_waiting_for_disk():
        raise ValueError("a step failed")
    assert setting() == before


def test_one_transaction_can_wait_inside_and_only_that_one() -> None:
    with commits_not_waiting_for_disk():
        with transaction.atomic():
            wait_for_disk_on_commit()
            assert setting() == "on"
        assert setting() == "off"


def test_asking_a_commit_to_wait_outside_a_transaction_is_a_mistake_said_at_once() -> None:
    with pytest.raises(RuntimeError, match=r"inside transaction\.atomic\(\)"):
        wait_for_disk_on_commit()


def test_a_session_that_died_inside_is_closed_so_the_next_query_has_the_servers_setting() -> None:
    with commits_not_waiting_for_disk():
        pid = connection.connection.info.backend_pid
        other = connections["default"].copy()  # a second session ends this one
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            other.close()
        with pytest.raises(OperationalError):
            setting()
    assert setting() == "on"  # a new session: the old one could not be reset, so it was closed


def test_a_time_limit_that_lands_in_the_reset_still_leaves_no_session_behind_that_does_not_wait() -> None:
    def time_limit_at_reset(execute, sql, params, many, context):
        if sql.startswith("RESET"):
            raise SoftTimeLimitExceeded()  # as the signal would, in the middle of the statement
        return execute(sql, params, many, context)

    with (
        pytest.raises(SoftTimeLimitExceeded),
        connection.execute_wrapper(time_limit_at_reset),
        commits_not_waiting_for_disk(),
    ):
        assert setting() == "off"
    assert setting() == "on"  # the session that could not be reset was closed


@contextmanager
def commits_of(*tables: str) -> Iterator[list[tuple[str, str, str]]]:
    """Every committed row write to `tables`: (table, INSERT or UPDATE, the synchronous_commit its commit ran under).

    A deferred constraint trigger runs as its transaction commits, inside it, so
    it reads the setting the commit reads: the session's, a SET LOCAL, or a
    set_config(..., true) made by the statement itself.
    """
    seen: list[tuple[str, str, str]] = []
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE test_commit_log (id serial, tbl text, op text, setting text)")
        cursor.execute(
            "CREATE FUNCTION test_log_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO test_commit_log (tbl, op, setting) "
            "VALUES (TG_TABLE_NAME, TG_OP, current_setting('synchronous_commit')); RETURN NULL; END $$"
        )
        for table in tables:
            cursor.execute(
                f"CREATE CONSTRAINT TRIGGER test_commit_log AFTER INSERT OR UPDATE ON {table} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_log_commit()"
            )
    try:
        yield seen
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tbl, op, setting FROM test_commit_log ORDER BY id")
            seen.extend(cursor.fetchall())
            for table in tables:
                cursor.execute(f"DROP TRIGGER test_commit_log ON {table}")
            cursor.execute("DROP FUNCTION test_log_commit()")
            cursor.execute("DROP TABLE test_commit_log")


def under(seen: list[tuple[str, str, str]], op: str, table: str) -> set[str]:
    return {setting for name, operation, setting in seen if (name, operation) == (table, op)}


def test_the_commit_log_sees_a_set_local_and_a_statements_own_set_config() -> None:
    with commits_of("orders_product") as seen:
        product(stock=1)  # the session's setting
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO off")
            product(stock=2)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE orders_product SET stock = 3 WHERE stock = 2 "
                "AND set_config('synchronous_commit', 'local', true) IS NOT NULL"
            )
    assert seen == [
        ("orders_product", "INSERT", "on"),
        ("orders_product", "INSERT", "off"),
        ("orders_product", "UPDATE", "local"),
    ]
    assert setting() == "on"


def test_an_order_waits_for_the_disk_only_at_its_payment_intent_and_its_email_only_once_sent(
    customer, settings
) -> None:
    settings.PAYMENT_SANDBOX_LATENCY_MS = 0
    settings.EMAIL_RATE_LIMIT = None
    order = place(customer, (product(stock=5), 1))

    with commits_of("orders_order", "orders_payment", "notifications_notification") as seen:
        assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.COMPLETED
    assert under(seen, "INSERT", "orders_payment") == {"on"}  # the intent: on disk before the gateway is called
    assert under(seen, "UPDATE", "orders_payment") == {"off"}  # its outcome: the gateway keeps it by key
    assert under(seen, "UPDATE", "orders_order") == {"off"}  # the claim and every checkpoint after it
    assert under(seen, "INSERT", "notifications_notification") == {"off"}  # queued with the completion
    assert setting() == "on"

    email = Notification.objects.get(subject_object=f"orders.order:{order.pk}")
    with commits_of("notifications_notification") as seen:
        assert outbox.send_notification(email.pk, attempt=Attempt("task-2")) == outbox.Outcome.SENT
    # The claim may be lost with a crash, the record that it went out may not.
    assert seen == [("notifications_notification", "UPDATE", "off"), ("notifications_notification", "UPDATE", "on")]
    assert setting() == "on"


def test_an_email_under_a_rate_limit_claims_through_the_orm_and_waits_for_the_disk_only_once_sent(settings) -> None:
    settings.EMAIL_RATE_LIMIT = (1000, 60)
    email = Notification.objects.create(
        kind="test", recipient="a@example.com", subject="s", body_text="b", dedup_key="k"
    )
    with commits_of("notifications_notification") as seen:
        assert outbox.send_notification(email.pk, attempt=Attempt("task-1")) == outbox.Outcome.SENT
    assert seen == [("notifications_notification", "UPDATE", "off"), ("notifications_notification", "UPDATE", "on")]
