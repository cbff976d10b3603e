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
"""

from __future__ import annotations

from typing import Any

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
