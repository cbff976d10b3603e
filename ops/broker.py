"""Kombu's Redis transport, with one Redis client per channel instead of one per command.

Kombu builds a new redis.Redis client for every command it sends outside its
consumer loop (every publish, ack and event), and redis-py 8 spends about 0.2 ms
of CPU building each one: it rebuilds its table of ~165 response callbacks in
every client's __init__ (redis-py issue #3624). Profiling put that at a third of
the CPU of a publish, and at several client builds per task in a worker.

A redis.Redis client is only a handle on the channel's connection pool and is
safe to share, so each channel keeps one, and makes a new one only when Kombu
replaced the pool (after a reconnect). Everything else is Kombu's own transport,
but for one work-around (_connparams). Selected by CELERY_BROKER_TRANSPORT for
redis:// and rediss:// URLs (Transport) and for sentinel:// URLs (SentinelTransport).

Sentinel gets the same shared client: there the channel's pool is redis-py's
SentinelConnectionPool, which asks the sentinels for the current master when it
opens a connection, drops its idle connections when the master has changed, and
reconnects a connection that finds itself on a read-only replica. A client is
still only a handle on that pool, so sharing one per channel is as safe as on
plain Redis. Measured through a throwaway sentinel (3 rounds of 3,000 publishes):
0.40-0.61 ms of CPU per publish shared, 1.01-1.14 ms with a client per command.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class SharedClient:
    """The two changes to Kombu's Redis channel, for both the plain and the Sentinel channel."""

    _shared_client: Any = None
    connection: Any
    pool: Any

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


class Channel(SharedClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(SharedClient, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    """sentinel://host:26379;sentinel://host2:26379, master name in the transport options (settings)."""

    Channel = SentinelChannel
