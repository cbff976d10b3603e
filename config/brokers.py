"""The broker settings' working parts: which URLs are refused, each transport's options, the task queues.

settings.py names every setting and reads every variable; these functions only
check a URL or build a value from what it read, so the reasons sit with the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BROKER_SCHEMES = ("redis://", "rediss://", "sentinel://", "amqp://", "amqps://", "filesystem://")


def broker_url(url: str) -> str:
    """The broker URL, once it names a transport the project runs on; ImproperlyConfigured otherwise."""
    # Redis Cluster is refused by name (kombu#732), before the general scheme check.
    if "cluster" in url.split("://")[0].lower() or "cluster=" in url.lower():
        raise ImproperlyConfigured(
            "CELERY_BROKER_URL names Redis Cluster, which Kombu's Redis transport does not support: a queue, its "
            "unacked messages and its broadcasts live under several keys in different hash slots, and the transport "
            "needs them on one server (celery/kombu#732). Use one Redis server, with Sentinel for failover "
            "(sentinel://host:26379;sentinel://host2:26379 and CELERY_BROKER_SENTINEL_MASTER), or RabbitMQ."
        )
    if not url.startswith(BROKER_SCHEMES):
        raise ImproperlyConfigured(
            "CELERY_BROKER_URL must be a redis://, rediss://, sentinel://, amqp://, amqps:// or filesystem:// URL, "
            f"not {url.split(':')[0]}."
        )
    return url


def broker_transport(url: str) -> str | None:
    """The Kombu transport class for the URL: the project's for Redis and RabbitMQ, Kombu's for the file broker.

    Redis: one shared Redis client per channel (ops/broker.py); under Sentinel
    (sentinel:// URLs list the sentinels, separated by ";", and the sentinels name
    the master) the same transport's Sentinel variant. RabbitMQ: py-amqp with a
    bound on the wait for a publisher confirm (ops/broker_amqp.py). None for
    filesystem://: Kombu picks its own by the scheme.
    """
    if url.startswith("sentinel://"):
        return "ops.broker:SentinelTransport"
    if url.startswith(("redis://", "rediss://")):
        return "ops.broker:Transport"
    if url.startswith("amqps://"):
        return "ops.broker_amqp:SSLTransport"
    if url.startswith("amqp://"):
        return "ops.broker_amqp:Transport"
    return None


def transport_options(url: str, broker_dir: Path, sentinel_master: str) -> dict[str, Any]:
    """broker_transport_options for the URL's transport (ImproperlyConfigured for Sentinel without a master name)."""
    if url.startswith("filesystem://"):
        # The embedded broker: messages are files under var/broker, so nothing needs
        # installing locally. The control folder carries broadcasts such as inspect ping.
        for sub in ("queue", "processed", "control"):
            (broker_dir / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "processed_folder": str(broker_dir / "processed"),
            "control_folder": str(broker_dir / "control"),
            "store_processed": False,
            # The file broker is polled: Kombu's default of once a second made tasks wait up
            # to a second and ping replies miss the health check's timeout (ops/health.py).
            "polling_interval": 0.1,
        }
    if url.startswith(("amqp://", "amqps://")):
        # Publisher confirms: a publish returns only once RabbitMQ has the message
        # (replicated, for a quorum queue), so an enqueue that "succeeded" survives a
        # broker crash. Each waits at most 5 s for its confirm (ops/broker_amqp.py):
        # RabbitMQ answers in milliseconds, or not at all while it refuses to take
        # messages (a memory or disk alarm, a quorum queue without its majority). With
        # Celery's three publish retries a send then gives up after about 20 s, within
        # gunicorn's 30 s for a request.
        return {"confirm_publish": True, "confirm_timeout": 5}
    options: dict[str, Any] = {
        # Redis redelivers an unacknowledged message after this long. It must be
        # longer than any countdown/ETA and any task's run time, or a task that is
        # merely waiting or still running gets delivered a second time.
        "visibility_timeout": 2 * 60 * 60,
        # A Redis that holds the connection open but answers nothing (a stopped process,
        # a machine gone without closing the socket, a failover that leaves the old
        # master unreachable) made every publish wait for ever: redis-py's default.
        # Kombu recommends this bound; it is well above the 1 s a consumer's BRPOP
        # waits, and a send that times out is an outage to the senders (core/dispatch.py).
        "socket_timeout": 5,
    }
    if url.startswith("sentinel://"):
        if not sentinel_master:
            raise ImproperlyConfigured(
                "CELERY_BROKER_SENTINEL_MASTER is required with a sentinel:// CELERY_BROKER_URL: "
                "the name the sentinels monitor the master under (sentinel monitor <name> ...)."
            )
        options["master_name"] = sentinel_master
    return options


def task_queues(names: tuple[str, ...], *, rabbitmq: bool, delivery_limit: int) -> tuple[Queue, ...]:
    """One queue per name, each bound by its own routing key (without one, Celery binds them all to "default")."""
    if not rabbitmq:
        return tuple(Queue(name, routing_key=name) for name in names)
    # Quorum queues: replicated and durable, so a message RabbitMQ accepted survives a
    # broker restart. Declared with their type (a queue's type and arguments are fixed
    # when it is created). The exchange is a topic exchange because Celery's native
    # delayed delivery cannot route through a direct one.
    exchange = Exchange("tasks", type="topic", durable=True)
    return tuple(
        Queue(
            name,
            exchange=exchange,
            routing_key=name,
            queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": delivery_limit},
        )
        for name in names
    )
