"""The real broker in tests, Redis or RabbitMQ: reading and emptying its queues, and sweeping after an outage.

The suite runs on Redis; bin/test and CI run the tests marked `rabbitmq` a second
time with CELERY_BROKER_URL on RabbitMQ (quorum queues). The `broker` fixture
gives a RedisBroker or a RabbitMQBroker, which answer the same questions
(messages, depth, idle, purge); a RedisBroker is also the Redis client itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
from django.db.models import Model
from kombu import Connection
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

from tests.support.processes import wait_for

# Kombu's Redis transport keeps a message with priority N in a list of its own:
# "<queue>\x06\x16<step>" for the steps 3, 6 and 9.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]


def project_queues() -> list[str]:
    from django.conf import settings

    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


class RedisBroker(redis.Redis):
    """The Redis client of the broker, with the questions tests ask of any broker."""

    def messages(self, queue: str) -> list[dict]:
        """Every message waiting in a queue, whatever its priority, decoded (Kombu's envelope: headers, properties, body)."""
        return [json.loads(raw) for key in queue_keys(queue) for raw in self.lrange(key, 0, -1)]

    def depth(self, queue: str) -> int:
        return sum(self.llen(key) for key in queue_keys(queue))

    def idle(self) -> bool:
        return idle(self)

    def purge(self) -> None:
        """Empty the project's queues, and forget what workers held unacknowledged."""
        self.delete(*[key for queue in project_queues() for key in queue_keys(queue)], *KOMBU_BOOKKEEPING)


# Keys kombu's Redis transport keeps besides the queues themselves.
KOMBU_BOOKKEEPING = ("unacked", "unacked_index", "unacked_mutex")
# RabbitMQ's native delayed delivery: countdowns wait in these queues (Kombu's names).
DELAY_QUEUES = tuple(level_name(level) for level in range(MAX_LEVEL + 1))


class RabbitMQBroker:
    """A connection to the RabbitMQ vhost of CELERY_BROKER_URL, asking what a test asks of the Redis broker."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = Connection(url)
        self.connection.ensure_connection(max_retries=3)

    def messages(self, queue: str) -> list[dict]:
        """Every message waiting in a queue, decoded like Kombu's Redis envelope; they stay in the queue.

        Fetched unacknowledged, then the channel is closed, which puts them back.
        """
        found = []
        channel = self.connection.channel()
        try:
            while (message := channel.basic_get(queue, no_ack=False)) is not None:
                found.append(
                    {
                        "headers": dict(message.headers),
                        "properties": dict(message.properties),
                        "body": base64.b64encode(_as_bytes(message.body)).decode(),
                    }
                )
        except self.connection.channel_errors as exc:
            if getattr(exc, "code", None) != 404:  # no worker declared the queue yet: empty
                raise
        finally:
            with contextlib.suppress(Exception):
                channel.close()
        return found

    def depth(self, queue: str) -> int:
        from ops.queues import queue_depth

        return queue_depth(self.connection, queue)

    def idle(self) -> bool:
        """No task waits in a project queue or a delay queue, and no worker holds one (running or prefetched).

        Unlike Redis, RabbitMQ does not tell a client over AMQP how many messages are
        unacknowledged, so the workers are asked. Checked twice, as on Redis.
        """

        def nothing_left() -> bool:
            if any(self.depth(queue) for queue in (*project_queues(), *DELAY_QUEUES)):
                return False
            return not workers_hold_tasks()

        if not nothing_left():
            return False
        time.sleep(0.2)
        return nothing_left()

    def purge(self) -> None:
        """Empty the project's queues and the delay queues (a countdown must not fire in the next test)."""
        for queue in (*project_queues(), *DELAY_QUEUES):
            channel = self.connection.channel()
            try:
                channel.queue_purge(queue)
            except self.connection.channel_errors as exc:
                if getattr(exc, "code", None) != 404:
                    raise
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

    def delete_queue(self, queue: str) -> None:
        with contextlib.suppress(*self.connection.channel_errors):
            self.connection.default_channel.queue_delete(queue)

    def close(self) -> None:
        self.connection.release()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def workers_hold_tasks() -> bool:
    """Whether any worker is running or holding a task (a broadcast to the workers of the test's broker)."""
    from config import celery_app

    inspect = celery_app.control.inspect(timeout=0.5)
    held = [*((inspect.active() or {}).values()), *((inspect.reserved() or {}).values())]
    return any(held)


def connect(url: str) -> RedisBroker | RabbitMQBroker:
    """The broker at `url`, as the `broker` fixture gives it."""
    if url.startswith(("amqp://", "amqps://")):
        return RabbitMQBroker(url)
    return RedisBroker.from_url(url)


def messages_in(client: Any, queue: str) -> list[dict]:
    """Every message waiting in a queue, whatever its priority, decoded."""
    return client.messages(queue)


def idle(client: redis.Redis) -> bool:
    """No task waits in the project's queues and none is delivered but unacknowledged (running, or held for a countdown).

    Tasks acknowledge late, so a message stays in Kombu's "unacked" hash until its
    task has finished. Between the pop from a queue and the entry in that hash
    there is a moment where a message is in neither, so the check is made twice.
    """
    from django.conf import settings

    def nothing_left() -> bool:
        queues = [key for queue in settings.CELERY_TASK_QUEUES for key in queue_keys(queue.name)]
        return not any(client.llen(key) for key in queues) and not client.hlen("unacked")

    if not nothing_left():
        return False
    time.sleep(0.2)
    return nothing_left()


def wait_until_idle(client: Any, what: str, timeout: float = 60) -> None:
    """Wait until every task sent so far has finished (see idle and RabbitMQBroker.idle)."""
    wait_for(client.idle, timeout, 0.1, f"every task to finish: {what}")


def sweep_until(broker_url: str, task_name: str, row: Model, status: str, what: str, timeout: float = 90) -> None:
    """Send the sweep `task_name` through the broker at `broker_url` once a second until `row` reaches `status`.

    For the tests where the broker was down: what was lost is recovered by a
    sweep that beat would run, sent here directly to the restarted broker.
    """
    from config import celery_app

    with celery_app.connection_for_write(broker_url) as connection:

        def swept_and_reached() -> bool:
            celery_app.send_task(task_name, connection=connection)
            time.sleep(1)
            row.refresh_from_db()
            return row.status == status

        wait_for(swept_and_reached, timeout, 0, what)


ORDER_SWEEP = "orders.tasks.check_pending_orders"


def web_sessions(base_url: str, *users: Model) -> list[Any]:
    """An HttpSession per user, logged in, on the real web process at base_url."""
    from django.test import Client

    from tests.support.servers import HttpSession

    sessions = []
    for user in users:
        login = Client()
        login.force_login(user)
        sessions.append(HttpSession(base_url, login.cookies["sessionid"].value))
    return sessions


def order_sweep_schedule() -> Model:
    """The order sweep's periodic task, disabled, for staff to run by hand (the admin's "run now")."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
    sweep, _ = PeriodicTask.objects.update_or_create(
        name=ORDER_SWEEP, defaults={"task": ORDER_SWEEP, "interval": every_minute, "enabled": False}
    )
    return sweep


def assert_run_now_answers_503(admin: Any, schedule: Model, web_output: Callable[[], str]) -> None:
    """While the broker refuses: the admin's "run now" (work sent in the request itself) answers 503, never 500."""
    run_now = admin.request(
        "POST", "/admin/django_celery_beat/periodictask/", form={"action": "run_now", "_selected_action": [schedule.pk]}
    )
    assert (run_now.status, run_now.headers.get("Retry-After")) == (503, "5"), run_now.body[:500]
    assert "Internal Server Error" not in web_output()


def rabbitmqctl(url: str, *args: str, node: dict | None = None) -> str:
    """Run rabbitmqctl against the RabbitMQ node serving `url` (this machine's, or the throwaway node bin/test started); its output.

    `node`: the record of a node the test started itself (RabbitMQServer.record).
    """
    from tests.support.servers import services

    command, env = services.rabbitmqctl_command(
        urlsplit(url).port or 5672, [node] if node else services.started_servers()
    )
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@contextlib.contextmanager
def throwaway_vhost(url: str) -> Iterator[str]:
    """A brand-new vhost on the RabbitMQ of `url`, open to its user, deleted afterwards; yields its URL.

    Nothing was ever declared there: no queue, no exchange, no delayed-delivery topology.
    """
    parts = urlsplit(url)
    name = f"test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl(url, "add_vhost", name)
    try:
        rabbitmqctl(url, "set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*")
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        rabbitmqctl(url, "delete_vhost", name)


# A policy under which RabbitMQ nacks every publish to the queues it applies to (quorum queues support it).
REJECT_EVERY_PUBLISH = json.dumps({"max-length": 0, "overflow": "reject-publish"})


def vhost_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def reject_every_publish(url: str, queues: str) -> None:
    """Make RabbitMQ nack every publish to the queues whose names match the regex `queues` on the vhost of `url`."""
    rabbitmqctl(url, "set_policy", "-p", vhost_name(url), "--apply-to", "queues", "full", queues, REJECT_EVERY_PUBLISH)


def take_publishes_again(url: str) -> None:
    rabbitmqctl(url, "clear_policy", "-p", vhost_name(url), "full")


def until_refused(publish: Callable[[], object]) -> Exception:
    """What `publish` raises once RabbitMQ refuses it; a quorum queue notices it is over its limit a moment late."""
    for _ in range(50):
        try:
            publish()
        except Exception as exc:  # whatever it is: it is what the callers get
            return exc
        time.sleep(0.1)
    raise AssertionError("RabbitMQ took every message: it should have nacked them")
