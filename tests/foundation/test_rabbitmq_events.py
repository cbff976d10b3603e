"""A worker's monitoring events on RabbitMQ: they reach a monitor, and are sent without publisher confirms.

With confirms on the events' connection the worker's main process waited for an
ack of every event, three a task (ops/broker_amqp.py EventsWithoutConfirms).
RabbitMQ only: only there does the project publish with confirms.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import pytest
from celery.events import get_exchange
from kombu import Connection, Queue

from config import celery_app
from ops.broker_amqp import events_connection_name
from tests.support.broker import rabbitmqctl
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.only_on_broker("rabbitmq"),
]

TASK = "orders.tasks.check_pending_orders"  # any task: this one finds nothing to do


def listed(url: str, what: str, *columns: str) -> list[dict]:
    """rabbitmqctl list_<what> for the vhost of `url`, as dicts."""
    vhost = urlsplit(url).path.lstrip("/")
    return json.loads(rabbitmqctl(url, f"list_{what}", "-p", vhost, *columns, "--formatter", "json", "--quiet"))


def named(connection: dict) -> str | None:
    return next((value for key, _, value in connection["client_properties"] if key == "connection_name"), None)


def test_a_workers_task_events_reach_a_monitor_over_a_connection_without_publisher_confirms(
    process_env: dict[str, str], vhost: str
) -> None:
    env = {**process_env, "CELERY_BROKER_URL": vhost}
    # The task is sent as the project sends tasks: the app's transport options, publisher confirms included.
    with Connection(vhost) as monitor, celery_app.connection_for_write(url=vhost) as publisher:
        # What Flower and `celery events` do: a queue of their own on the event exchange.
        exchange = get_exchange(monitor, name=celery_app.conf.event_exchange)
        queue = Queue(f"monitor-{uuid.uuid4().hex[:8]}", exchange, routing_key="task.#", auto_delete=True)
        with monitor.SimpleQueue(queue) as events, WorkerProcess(env, concurrency=1) as worker:
            worker.wait_started()
            task_id = celery_app.send_task(TASK, connection=publisher).id
            seen: list[str] = []

            def succeeded() -> bool:
                try:
                    message = events.get(timeout=1)
                except events.Empty:
                    return False
                message.ack()
                # The worker buffers task events and sends them several to a message ("task.multi").
                batch = message.payload if isinstance(message.payload, list) else [message.payload]
                seen.extend(event["type"] for event in batch if event.get("uuid") == task_id)
                return "task-succeeded" in seen

            wait_for(succeeded, 60, message=f"the task's events; seen {seen}:\n{worker.output()[-3000:]}")
            assert seen[:2] == ["task-received", "task-started"], seen

            # The worker's events connection, by the name it gives RabbitMQ: its channel does not confirm,
            name = events_connection_name(worker.nodename)
            connections = listed(vhost, "connections", "pid", "client_properties")
            [pid] = [c["pid"] for c in connections if named(c) == name] or [None]
            assert pid is not None, f"no connection named {name!r} among {[named(c) for c in connections]}"
            channels = listed(vhost, "channels", "connection", "confirm")
            assert [c["confirm"] for c in channels if c["connection"] == pid] == [False]
            # while the task's publish, on a connection of the app's, did wait for its confirm.
            assert True in {c["confirm"] for c in channels if c["connection"] != pid}, channels
