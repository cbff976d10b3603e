"""Which tasks store results (CELERY_TASK_ANNOTATIONS): a per-task decision that staff must not notice.

Order results stay (the order admin links to them), emails store none (the
outbox row says it all), and a failure is stored for every task, so it is
listed in the admin and can be retried.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import transaction
from django_celery_results.models import TaskResult

from notifications.models import Notification
from notifications.tasks import send_notification
from orders.models import Order
from tests.orders.helpers import place, product
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_an_order_stores_its_result_without_a_started_write_and_its_email_stores_none(
    start_worker_process, customer, smtp_server
) -> None:
    start_worker_process(EMAIL_URL=f"smtp://127.0.0.1:{smtp_server.port}", PAYMENT_SANDBOX_LATENCY_MS="0")
    with transaction.atomic():
        order = place(customer, (product(), 1))

    email = wait_for(
        lambda: Notification.objects.filter(status="sent", subject_object=f"orders.order:{order.pk}").first(),
        60,
        0.1,
        "the order's email",
    )
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED
    # The email can go out before the order's task, which queued it, has stored its result.
    result = wait_for(
        lambda: TaskResult.objects.filter(task_name="orders.tasks.process_order").first(), 30, 0.1, "the order's result"
    )
    assert TaskResult.objects.filter(task_name="orders.tasks.process_order").count() == 1
    assert (result.status, result.date_started) == ("SUCCESS", None)  # no STARTED state was written
    assert result.task_id == order.events.get(kind="attempt").task_id
    assert email.task_id and not TaskResult.objects.filter(task_id=email.task_id).exists()


def test_a_failing_task_that_ignores_results_still_stores_its_failure(worker) -> None:
    broken = send_notification.delay("not-a-number")

    row = wait_for(lambda: TaskResult.objects.filter(task_id=broken.id).first(), 30, 0.1, "the failure")
    assert row.status == "FAILURE"
    assert row.task_name == "notifications.tasks.send_notification"


@pytest.mark.django_db
def test_each_stored_state_is_one_statement_that_keeps_the_library_s_fields(django_assert_num_queries) -> None:
    from celery import states

    from config import celery_app

    backend = celery_app.backend
    request = SimpleNamespace(
        id="upsert-1",
        task="orders.tasks.process_order",
        argsrepr="[42]",
        kwargsrepr="{}",
        hostname="w1@host",
        periodic_task_name=None,
        children=[],
        meta={},
    )

    with django_assert_num_queries(1):
        backend.store_result("upsert-1", None, states.STARTED, request=request)
    started = TaskResult.objects.get(task_id="upsert-1")
    assert (started.status, started.task_name, started.worker) == ("STARTED", "orders.tasks.process_order", "w1@host")
    assert started.date_started is not None

    with django_assert_num_queries(1):
        backend.store_result("upsert-1", "completed", states.SUCCESS, request=request)
    [done] = TaskResult.objects.filter(task_id="upsert-1")
    assert (done.status, done.result, done.task_args) == ("SUCCESS", '"completed"', '"[42]"')
    assert (done.date_started, done.date_created) == (started.date_started, started.date_created)
    assert done.date_done >= started.date_done
    assert backend.get_task_meta("upsert-1")["result"] == "completed"
