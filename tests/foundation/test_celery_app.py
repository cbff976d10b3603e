"""The Celery app: configuration through the CELERY namespace, routing and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django_celery_results.models import TaskResult

from config import celery_app
from core.results import UpsertDatabaseBackend
from tests.support.broker import DELAY_QUEUES
from tests.support.processes import PROJECT_ROOT, wait_for


@celery_app.task(name="tests.foundation.echo")
def echo(value: str, *, times: int = 1) -> str:
    return value * times


def test_it_reads_celery_settings_through_the_namespace() -> None:
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_retry_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.result_backend == "ops.result_backend:DatabaseBackend"
    assert isinstance(celery_app.backend, UpsertDatabaseBackend)  # one upsert per stored state (core/results.py)
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert conf.timezone == settings.TIME_ZONE
    assert conf.task_default_queue == "default"
    assert conf.worker_send_task_events is True  # Flower and `celery events` see every task
    assert [queue.name for queue in conf.task_queues] == ["high_priority", "default", "low_priority"]


def test_it_takes_celery_values_from_the_environment_through_django_settings() -> None:
    script = "from config import celery_app; print(celery_app.conf.result_expires.total_seconds())"
    env = {**_base_env(), "CELERY_RESULT_EXPIRES": "3d"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == timedelta(days=3).total_seconds()


def test_autodiscovery_registers_the_tasks_of_every_apps_tasks_module() -> None:
    script = (
        "from config import celery_app; celery_app.loader.import_default_modules(); "
        "print('\\n'.join(sorted(name for name in celery_app.tasks if not name.startswith('celery.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=_base_env(), cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    registered = set(out.stdout.split())
    assert {"orders.tasks.process_order", "orders.tasks.check_pending_orders"} <= registered


def longest_time_limit() -> float:
    celery_app.loader.import_default_modules()
    return max((task.time_limit or settings.CELERY_TASK_TIME_LIMIT) for name, task in celery_app.tasks.items())


@pytest.mark.only_on_broker("redis")  # RabbitMQ has no visibility timeout
def test_visibility_timeout_outlasts_every_retry_countdown_and_time_limit() -> None:
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    longest_limit = longest_time_limit()
    assert timeout > settings.TASK_RETRY_BACKOFF_MAX
    assert timeout > longest_limit


# RabbitMQ's default consumer_timeout (since 3.8.15): a delivery unacknowledged for this
# long closes the worker's channel. Tasks acknowledge late, so no task may run longer.
RABBITMQ_DEFAULT_CONSUMER_TIMEOUT = 30 * 60


def test_every_task_time_limit_ends_before_rabbitmqs_consumer_timeout() -> None:
    assert longest_time_limit() < RABBITMQ_DEFAULT_CONSUMER_TIMEOUT


def test_base_task_retries_a_lost_worker_within_seconds() -> None:
    task = celery_app.tasks["tests.foundation.echo"]
    assert task.retry_on_worker_lost is True
    assert 0 < task.default_retry_delay <= 10
    assert task.max_retries is not None


@pytest.mark.rabbitmq
@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("notifications.tasks.anything", "high_priority"),
        ("reports.tasks.anything", "low_priority"),
        ("orders.tasks.anything", "default"),
        ("somewhere.else.entirely", "default"),
    ],
)
def test_it_routes_tasks_to_their_queue_on_the_real_broker(broker, task_name: str, queue: str) -> None:
    celery_app.send_task(task_name, args=[1])

    lengths = {q.name: broker.depth(q.name) for q in settings.CELERY_TASK_QUEUES}
    assert lengths == {q.name: int(q.name == queue) for q in settings.CELERY_TASK_QUEUES}
    [message] = broker.messages(queue)
    assert message["headers"]["task"] == task_name


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_consumes_from_the_broker_and_stores_the_result_in_postgres(thread_worker) -> None:
    result = echo.delay("ab", times=2)
    assert result.get(timeout=20) == "abab"

    row = TaskResult.objects.get(task_id=result.id)
    assert row.status == "SUCCESS"
    assert row.task_name == "tests.foundation.echo"
    assert json.loads(row.result) == "abab"
    # ops.publish records the real arguments as JSON, so a result can be retried.
    assert json.loads(json.loads(row.task_args)) == ["ab"]
    assert json.loads(json.loads(row.task_kwargs)) == {"times": 2}
    assert row.worker
    assert row.worker in thread_worker.hostname
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def _base_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key not in {"CELERY_RESULT_EXPIRES"}}


@pytest.mark.only_on_broker("redis")  # ops/broker.py is the Redis transport
def test_a_broker_channel_shares_one_redis_client_and_replaces_it_with_its_pool(broker) -> None:
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        assert type(channel).__module__ == "ops.broker"
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        channel._pool = None  # what Kombu does when it reconnects
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool


@pytest.mark.only_on_broker("rabbitmq")  # on Redis a worker holds a countdown until it is due
@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_on_rabbitmq_a_countdown_waits_in_the_broker_and_not_in_the_workers_memory(thread_worker, broker) -> None:
    result = echo.apply_async(("later",), countdown=4)

    # Native delayed delivery: the message waits in RabbitMQ's delay queues...
    wait_for(lambda: any(broker.depth(queue) for queue in DELAY_QUEUES), 10, 0.1, "the task in a delay queue")
    # ...so no worker holds it unacknowledged (prefetch, consumer_timeout).
    assert not any((celery_app.control.inspect(timeout=1).scheduled() or {}).values())
    assert result.get(timeout=30) == "later"
