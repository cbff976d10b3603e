"""Kombu's Redis transport, with one Redis client per channel instead of one per command.

Kombu builds a new redis.Redis client for every command it sends outside its
consumer loop (every publish, ack and event), and redis-py 8 spends about 0.2 ms
of CPU building each one: it rebuilds its table of ~165 response callbacks in
every client's __init__ (redis-py issue #3624). Profiling put that at a third of
the CPU of a publish, and at several client builds per task in a worker.

A redis.Redis client is only a handle on the channel's connection pool and is
safe to share, so each channel keeps one, and makes a new one only when Kombu
replaced the pool (after a reconnect). Everything else is Kombu's own transport,
but for one work-around (Channel._connparams). Selected by CELERY_BROKER_TRANSPORT
for redis:// and rediss:// URLs.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _connparams(self, asynchronous: bool = False) -> dict:
        # Celery 5.7.0 closes a lost broker connection twice: Consumer.
        # on_connection_error_after_connected() calls connection.collect(), which
        # detaches the transport (transport.client = None), then connection.close()
        # (added by celery/celery#10242). If the first close stopped early (the
        # channel was waiting in BRPOP), the second one tries to put the worker's
        # unacknowledged messages back, needs a new connection pool, and reads the
        # host from the detached transport: AttributeError, which is no connection
        # error, so the worker exits ("Unrecoverable error: 'NoneType' object has
        # no attribute 'hostname'"). kombu#970 is the same failure at shutdown.
        # Raise the connection error Kombu expects instead: the restore is skipped
        # and the worker reconnects. Redis keeps those messages in its unacked set
        # and redelivers them after the visibility timeout; if Redis lost them, the
        # sweeps re-send the work from the database.
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed; unacknowledged messages stay in Redis")
        return super()._connparams(asynchronous=asynchronous)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer loop's client; Kombu already keeps it
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
