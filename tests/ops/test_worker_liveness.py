"""A worker's health check asks whether it takes work, not whether it answers pings (ops/liveness.py)."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from celery.utils.nodenames import worker_direct
from django.core.management import CommandError, call_command
from django.db import transaction

from orders.models import Order
from tests.orders.helpers import place, product
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def takes_work(node: str) -> bool:
    """What compose's health check runs: manage.py worker_status NODE."""
    try:
        call_command("worker_status", node, stdout=io.StringIO())
    except CommandError:
        return False
    return True


@pytest.mark.rabbitmq
def test_a_busy_worker_passes_its_health_check_and_one_that_answers_pings_but_takes_nothing_fails_it(
    process_env, broker, celery_app, customer, settings
) -> None:
    settings.WORKER_PROBE_INTERVAL = timedelta(seconds=1)  # the command reads it; the worker gets it from env
    env = {**process_env, "WORKER_PROBE_INTERVAL": "1s", "PAYMENT_SANDBOX_LATENCY_MS": "2500"}
    with WorkerProcess(env, concurrency=1) as worker:
        worker.wait_ready(celery_app)
        node = worker.nodename
        wait_for(lambda: takes_work(node), 20, 0.2, "the worker's first probe")

        # Busy for longer than three probe intervals: its only child holds one order throughout.
        with transaction.atomic():
            order = place(customer, (product(), 1))
        wait_for(lambda: Order.objects.get(pk=order.pk).status == "processing", 20, 0.05, "the order to start")
        while Order.objects.get(pk=order.pk).status == "processing":
            assert takes_work(node), "a busy worker failed its health check"
            time.sleep(0.2)

        # Alive, answering pings, but consuming nothing: every queue cancelled, its own included.
        for queue in [*(q.name for q in settings.CELERY_TASK_QUEUES), worker_direct(node).name]:
            celery_app.control.cancel_consumer(queue, destination=[node], reply=True)
        wait_for(lambda: not takes_work(node), 20, 0.2, "the health check to fail")
        assert celery_app.control.ping(destination=[node], timeout=2), "the worker no longer answers pings"
