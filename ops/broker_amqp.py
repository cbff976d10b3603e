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

A publish made while core.confirms.later() is in effect (a worker's sends on
commit, core.dispatch) does not wait: its confirm is settled by
wait_for_confirms() when the task has ended, under the same bound.

The worker's monitoring events go without confirms (EventsWithoutConfirms, the
worker_consumer setting): see there.
"""

from __future__ import annotations

import time
from typing import Any

from amqp import Message, spec
from amqp.exceptions import MessageNacked
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection as KombuConnection
from kombu.transport import pyamqp

from core import confirms


class Channel(pyamqp.Channel):
    """py-amqp's channel, with a bound on each confirm's wait and confirms counted by delivery tag.

    py-amqp's own publish waits for the next ack or nack on the channel, whichever
    message it is for. This one numbers its publishes as RabbitMQ does (1, 2, ... from
    the channel's confirm.select) and settles each ack or nack, single or `multiple`,
    against that count, so a publish may also leave its confirm for later (core.confirms)
    and wait_for_confirms() settles those at the end of the task.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forget_confirms()
        # The channel's own handlers see every ack and nack, whoever waits for them.
        self.events["basic_ack"].add(self._on_ack)
        self.events["basic_nack"].add(self._on_nack)

    def _forget_confirms(self) -> None:
        self._published = 0  # the delivery tag of the last publish in confirm mode
        self._unconfirmed: dict[int, str] = {}  # delivery tag -> what was published, oldest first
        self._refused: dict[int, str] = {}

    def _do_revive(self) -> None:
        # To RabbitMQ a revived channel is a new one: its delivery tags start again at 1.
        self._forget_confirms()
        super()._do_revive()

    def basic_publish_confirm(self, msg: Message, *args: Any, **kwargs: Any) -> Any:
        timeout = kwargs.pop("confirm_timeout", None) or kwargs.get("timeout") or self.connection.confirm_timeout
        if not self._confirm_selected:
            self._confirm_selected = True
            self.confirm_select()
        try:
            result = self._basic_publish(msg, *args, **kwargs)
            self._published += 1
            self._unconfirmed[self._published] = _what(msg)
            if confirms.deferred():
                return result
            self._settle(self._published, timeout)
        except TimeoutError:
            # RabbitMQ is not reading this connection: closing it politely (channel.close,
            # then connection.close, each waiting for its -ok) would wait for ever as well.
            self.connection.collect()
            raise
        if self._refused.pop(self._published, None) is not None:
            raise MessageNacked()
        return result

    def wait_for_confirms(self, timeout: float | None = None) -> None:
        """Wait until RabbitMQ confirmed every publish so far: MessageNacked names the ones it refused.

        TimeoutError after `timeout` seconds (the connection's confirm_timeout by
        default), the connection then dropped as after any confirm that never came.
        """
        try:
            self._settle(self._published, timeout or self.connection.confirm_timeout)
        except TimeoutError:
            self.connection.collect()
            raise
        if self._refused:
            refused, self._refused = self._refused, {}
            raise MessageNacked(f"RabbitMQ refused {', '.join(refused.values())}")

    def _settle(self, upto: int, timeout: float | None) -> None:
        """Read acks and nacks until every publish up to delivery tag `upto` has one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._unconfirmed and next(iter(self._unconfirmed)) <= upto:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no confirm from RabbitMQ within {timeout:g}s")
            self.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=left)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._answered(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused.update(self._answered(delivery_tag, multiple))

    def _answered(self, delivery_tag: int, multiple: bool) -> dict[int, str]:
        """Take the publishes an ack or nack answers off the unconfirmed ones, and return them."""
        if not multiple:
            what = self._unconfirmed.pop(delivery_tag, None)
            return {} if what is None else {delivery_tag: what}
        answered = {}
        while self._unconfirmed and (tag := next(iter(self._unconfirmed))) <= delivery_tag:
            answered[tag] = self._unconfirmed.pop(tag)
        return answered


def _what(msg: Message) -> str:
    """A published message as a log names it: the task and its arguments, for a Celery task message."""
    headers = msg.properties.get("application_headers") or {}
    task = headers.get("task")
    return f"{task}{headers.get('argsrepr', '')}" if task else "a message"


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
