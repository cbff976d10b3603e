"""Fixtures of the fault suite: servers of the test's own, and the environment of the processes run against them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from tests.faults.helpers import FAULTS_DB, Shop
from tests.support.servers import PostgresServer, RedisServer


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, that the test may stop and restart empty."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_postgres(transactional_db: None) -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, empty until the test copies the test database into it (Shop.move_to)."""
    with PostgresServer() as server:
        yield server
        if hasattr(connections._connections, FAULTS_DB):
            connections[FAULTS_DB].close()
            del connections[FAULTS_DB]


@pytest.fixture
def shop(web_env: dict[str, str], own_redis: RedisServer, smtp_server, customer) -> Shop:
    """Products, a logged-in customer, the sweeps on a short schedule, and the env for processes on own servers."""
    return Shop.create(web_env, own_redis, smtp_server, customer)
