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
def commit_settings() -> Iterator[list[tuple[str, str]]]:
    """Each statement's first words, with the synchronous_commit it ran under (read right after it, in its session)."""
    seen: list[tuple[str, str]] = []

    def record(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        with context["connection"].connection.cursor() as raw:  # psycopg's own cursor: not recorded, results kept
            raw.execute("SELECT current_setting('synchronous_commit')")
            seen.append((" ".join(sql.split()[:4]), raw.fetchone()[0]))
        return result

    with connection.execute_wrapper(record):
        yield seen


def under(seen: list[tuple[str, str]], verb: str, table: str) -> set[str]:
    return {value for statement, value in seen if statement.startswith(f'{verb} "{table}"')}


def test_an_order_waits_for_the_disk_only_at_its_payment_intent_and_its_email_only_once_sent(
    customer, settings
) -> None:
    settings.PAYMENT_SANDBOX_LATENCY_MS = 0
    settings.EMAIL_RATE_LIMIT = None
    order = place(customer, (product(stock=5), 1))

    with commit_settings() as seen:
        assert pipeline.process_order(order.pk, attempt=Attempt("task-1")) == pipeline.Outcome.COMPLETED
    assert under(seen, "INSERT INTO", "orders_payment") == {"on"}  # the intent: on disk before the gateway is called
    assert under(seen, "UPDATE", "orders_payment") == {"off"}  # its outcome: the gateway keeps it by key
    assert under(seen, "UPDATE", "orders_order") == {"off"}  # every checkpoint after the claim
    assert under(seen, "INSERT INTO", "notifications_notification") == {"off"}  # queued with the completion
    assert setting() == "on"

    email = Notification.objects.get(subject_object=f"orders.order:{order.pk}")
    with commit_settings() as seen:
        assert outbox.send_notification(email.pk, attempt=Attempt("task-2")) == outbox.Outcome.SENT
    updates = [value for statement, value in seen if statement.startswith('UPDATE "notifications_notification"')]
    assert updates == ["off", "on"]  # the claim may be lost with a crash, the record that it went out may not
