"""Kombu's RabbitMQ transport (py-amqp), with a bound on how long a publish waits for its confirm.

With publisher confirms (config/brokers.py) a publish waits for RabbitMQ's ack,
and py-amqp waits for ever unless the caller names a timeout, which Celery never
does. RabbitMQ withholds the ack for as long as it cannot take the message: under
a memory or disk alarm it stops reading from every connection that publishes, and
a quorum queue that lost its majority confirms nothing until the majority is back.
A web request that placed an order then hung until gunicorn killed its worker,
and a worker child that queued an email hung in its task.

Here each publish waits at most `confirm_timeout` seconds (a transport option,
config/brokers.py), and a connection whose confirm timed out is dropped without
the closing handshake, which would wait as long. To Kombu that is a lost connection: it
reconnects and publishes again under Celery's publish retry policy (three more
tries), then raises, and the senders treat that as the broker being unavailable
(core/dispatch.py): the row stays for its sweep, and a request answers 503 or
202 as it does when Redis refuses a write. What RabbitMQ had not read of a
connection that timed out goes when the connection closes; what it had taken
and confirmed late is delivered, and meets the task's lease or dedup key.
Selected by CELERY_BROKER_TRANSPORT for amqp:// (Transport) and amqps:// (SSLTransport).

The worker's monitoring events go without confirms (EventsWithoutConfirms, the
worker_consumer setting): see there.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection as KombuConnection
from kombu.transport import pyamqp


class Channel(pyamqp.Channel):
    def basic_publish_confirm(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("confirm_timeout") is None:
            kwargs["confirm_timeout"] = self.connection.confirm_timeout
        try:
            return super().basic_publish_confirm(*args, **kwargs)
        except TimeoutError:
            # RabbitMQ is not reading this connection: closing it politely (channel.close,
            # then connection.close, each waiting for its -ok) would wait for ever as well.
            self.connection.collect()
            raise


class Connection(pyamqp.Connection):
    Channel = Channel

    def __init__(self, *args: Any, confirm_timeout: float | None = None, **kwargs: Any) -> None:
        self.confirm_timeout = confirm_timeout
        super().__init__(*args, **kwargs)


class Transport(pyamqp.Transport):
    Connection = Connection


class SSLTransport(pyamqp.SSLTransport):
    Connection = Connection


class EventsWithoutConfirms(CeleryConsumer):
    """The worker's consumer, sending its monitoring events without waiting for publisher confirms.

    Celery's Events step opens the connection the worker sends its events on
    (task-received, task-started, task-succeeded, heartbeats) with
    connection_for_write; nothing else in the worker calls it. With publisher
    confirms on that connection, the worker's main process waited for RabbitMQ's
    ack of each event, a round trip per event and three per task, between handing
    tasks to its pool: 13% of the worker's samples in the order pipeline (py-spy).
    The events are transient messages for Flower and `celery events`, which a
    monitor reads live and nothing replays, so they go as on Redis: without a
    confirm. Tasks, retries and replies keep theirs (the app's other connections).
    The connection is named "<worker> events" for RabbitMQ's connection list.
    """

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> KombuConnection:
        if not self.app.conf.broker_transport_options.get("confirm_publish"):
            return super().connection_for_write(url=url, heartbeat=heartbeat)
        options = {
            "confirm_publish": False,
            "client_properties": {"connection_name": events_connection_name(self.hostname)},
        }
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options=options)
        )


def events_connection_name(hostname: str) -> str:
    """How RabbitMQ lists the connection a worker sends its events on."""
    return f"{hostname} events"
