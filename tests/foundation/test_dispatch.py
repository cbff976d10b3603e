"""core.dispatch: tasks sent by name, after the commit, to a declared queue; a broker outage is left to the sweeps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction

from config import celery_app
from core import dispatch
from tests.support.broker import messages_in
from tests.support.processes import PROJECT_ROOT

SENDERS = {"send", "send_on_commit", "signature"}
APP_DIRECTORIES = ("config", "core", "ops", "accounts", "orders", "notifications", "reports")


def _names_sent() -> dict[str, list[str]]:
    """Every task name passed to core.dispatch in the project's code, with where it is sent from."""
    sent: dict[str, list[str]] = {}
    for directory in APP_DIRECTORIES:
        for path in sorted((PROJECT_ROOT / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SENDERS
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "dispatch"
                ):
                    continue
                where = f"{Path(path).relative_to(PROJECT_ROOT)}:{node.lineno}"
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{where}: name the task with a string literal, so this test can check it"
                )
                sent.setdefault(first.value, []).append(where)
    return sent


def test_every_task_name_sent_anywhere_is_a_registered_task_routed_to_a_declared_queue() -> None:
    sent = _names_sent()
    declared = {queue.name for queue in settings.CELERY_TASK_QUEUES}
    celery_app.loader.import_default_modules()

    # The scan finds the project's senders (a scan that found nothing would pass vacuously).
    assert {
        "orders.tasks.process_order",
        "notifications.tasks.send_notification",
        "reports.tasks.generate_report",
    } <= set(sent)
    for name, places in sent.items():
        assert name in celery_app.tasks, f"{name} (sent from {places}) is not a registered task"
        route = celery_app.amqp.router.route({}, name)
        assert route["queue"].name in declared, f"{name} is routed to {route['queue'].name}"


def test_an_unknown_task_name_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(LookupError, match="not a registered task"):
        dispatch.send("orders.tasks.no_such_task", [1])
    with pytest.raises(LookupError):
        dispatch.send_on_commit("orders.tasks.no_such_task", [1])


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_task_sent_on_commit_leaves_only_when_the_transaction_commits(broker) -> None:
    with transaction.atomic():
        dispatch.send_on_commit("orders.tasks.check_pending_orders")
        assert messages_in(broker, "default") == []  # not before the commit
        transaction.set_rollback(True)
    assert messages_in(broker, "default") == []  # never, after a rollback

    with transaction.atomic():
        dispatch.send_on_commit("orders.tasks.check_pending_orders", task_id="after-commit")

    [message] = messages_in(broker, "default")
    assert (message["headers"]["task"], message["headers"]["id"]) == (
        "orders.tasks.check_pending_orders",
        "after-commit",
    )
