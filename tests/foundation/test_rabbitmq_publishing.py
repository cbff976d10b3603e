"""Publishing on RabbitMQ from processes that are not workers: a countdown on a vhost no worker has used, and refusals.

RabbitMQ only: the suite's settings declare quorum queues, with native delayed
delivery, only for an amqp:// broker, and only RabbitMQ nacks a publish. Each
test makes a vhost of its own (tests/support/broker.py throwaway_vhost).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from celery.exceptions import TimeoutError as ResultTimeout
from django.conf import settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from config import celery_app
from tests.support.broker import DELAY_QUEUES, RabbitMQBroker, project_queues, throwaway_vhost
from tests.support.processes import PROJECT_ROOT, WorkerProcess

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.only_on_broker("rabbitmq"),
]

COUNTDOWN = 6
SWEEP = "orders.tasks.check_pending_orders"
# RabbitMQ nacks every publish to a full queue that rejects publishes when full (quorum queues support it).
REJECT_EVERY_PUBLISH = json.dumps({"max-length": 0, "overflow": "reject-publish"})


@pytest.fixture
def vhost() -> Iterator[str]:
    with throwaway_vhost(settings.CELERY_BROKER_URL) as url:
        yield url


def vhost_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def waiting(url: str, queues: tuple[str, ...] | list[str]) -> int:
    broker = RabbitMQBroker(url)
    try:
        return sum(broker.depth(queue) for queue in queues)
    finally:
        broker.close()


def test_on_a_vhost_no_worker_ever_used_a_countdown_waits_in_rabbitmq_and_runs_when_due(
    process_env: dict[str, str], vhost: str
) -> None:
    env = {**process_env, "CELERY_BROKER_URL": vhost}
    sent_at = timezone.now()

    # An operator's command and a service's dispatch.send, each in a process of its own, before any worker started.
    by_hand = manage(env, "run_task", SWEEP, "--countdown", str(COUNTDOWN))
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    by_service = str(uuid.uuid4())
    script = (
        f"from core import dispatch; print(dispatch.send({SWEEP!r}, countdown={COUNTDOWN}, task_id={by_service!r}))"
    )
    sent = manage(env, "shell", "-c", script)
    assert sent.stdout.split()[-1:] == ["True"], sent.stdout + sent.stderr[-3000:]

    # Both wait in RabbitMQ's delay queues, none in a task queue.
    assert (waiting(vhost, DELAY_QUEUES), waiting(vhost, project_queues())) == (2, 0)

    with WorkerProcess(env, concurrency=1) as worker:
        worker.wait_started()
        for task_id in (by_hand.stdout.split()[-1], by_service):
            try:
                celery_app.AsyncResult(task_id).get(timeout=60)
            except ResultTimeout:
                raise AssertionError(f"{task_id} never ran:\n{worker.output()[-4000:]}") from None
            assert TaskResult.objects.get(task_id=task_id).date_done >= sent_at + timedelta(seconds=COUNTDOWN)
