"""Retry from the results admin, with real workers: a new task, linked to the old one, with the original arguments."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django_celery_results.models import TaskResult

from ops import runs
from ops.models import Failure, TaskRun
from ops.publish import recorded_arguments
from tests.orders.helpers import fault, ledger, place, product
from tests.support.metrics import scrape
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def stored(task_id: str, timeout: float = 30) -> TaskResult:
    def done() -> TaskResult | None:
        return TaskResult.objects.filter(task_id=task_id, status__in=["SUCCESS", "FAILURE"]).first()

    return wait_for(done, timeout, 0.1, f"the result of {task_id}")  # type: ignore[return-value]


@pytest.mark.rabbitmq
def test_retrying_a_failed_result_sends_a_new_task_with_the_original_arguments(
    start_worker_process, admin_client, admin_user
) -> None:
    start_worker_process()
    failing = runs.run_task(
        "reports.tasks.aggregate_report_slice", [1, "2025-13-01", "2025-01-01"], {}, user=admin_user
    )
    old = stored(failing.task_id)
    assert old.status == "FAILURE"
    assert recorded_arguments(old.task_args, old.task_kwargs) == ([1, "2025-13-01", "2025-01-01"], {})

    admin_client.post(
        "/admin/django_celery_results/taskresult/", {"action": "retry_selected", "_selected_action": [old.pk]}
    )

    retry = TaskRun.objects.get(retry_of=old.task_id)
    new = stored(retry.task_id)
    assert new.task_id != old.task_id
    assert new.task_name == old.task_name
    assert recorded_arguments(new.task_args, new.task_kwargs) == ([1, "2025-13-01", "2025-01-01"], {})
    page = admin_client.get(f"/admin/django_celery_results/taskresult/{new.pk}/change/").content.decode()
    assert old.task_id in page.split("Retry of")[1] and admin_user.username in page.split("Retry of")[1]


def test_retrying_an_orders_result_replays_the_order_through_its_service(
    start_worker_process, admin_client, customer
) -> None:
    start_worker_process(PAYMENT_SANDBOX_LATENCY_MS="0")
    with transaction.atomic():
        order = place(customer, (product(stock=5), 1))
        fault(order, "charge", "decline")
    # A declined order is a failure for good: the task ends in FAILURE with the order's reason,
    # so the results admin, the failures page and the metrics count it.
    first = wait_for(
        lambda: TaskResult.objects.filter(task_name="orders.tasks.process_order", status="FAILURE").first(),
        30,
        message="the declined order's result",
    )
    order.refresh_from_db()
    assert order.status == "failed"
    assert json.loads(first.result)["exc_type"] == "OrderFailed"
    assert json.loads(first.result)["exc_message"] == [order.failure_reason]
    # The worker records the failure after it stores the result: wait for what is asserted.
    failure = wait_for(
        lambda: Failure.objects.filter(task_id=first.task_id).first(), 30, message="the failure's record"
    )
    assert (failure.error_type, failure.subject_id, failure.error) == (
        "OrderFailed",
        str(order.pk),
        order.failure_reason,
    )
    assert failure.label.startswith("Payment declined")
    metric = scrape(admin_client)["backoffice_task_failures_24h"]
    assert metric[(("task", "orders.tasks.process_order"),)] == 1

    admin_client.post(
        "/admin/django_celery_results/taskresult/", {"action": "retry_selected", "_selected_action": [first.pk]}
    )

    retry = TaskRun.objects.get(retry_of=first.task_id)
    new = stored(retry.task_id)
    order.refresh_from_db()
    assert (order.status, order.replays, json.loads(new.result)) == ("completed", 1, "completed")
    assert recorded_arguments(new.task_args, new.task_kwargs) == ([order.pk], {})
    assert len(ledger(order)) == 1
    assert retry.options == {"through": "orders.services.actions.retry_processing"}
