"""bin/services.py: each run's `down` stops the throwaway servers its own `up` started, and no other run's."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from tests.support.processes import PROJECT_ROOT, free_port, wait_for

# bin/services.py up as bin/test runs it, but with its default Redis URL on a port where nothing answers:
# with CELERY_BROKER_URL unset, it starts a throwaway redis-server (about 0.1 s; PostgreSQL is the test's own).
UP_WITHOUT_A_LOCAL_REDIS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("services", "bin/services.py")
services = importlib.util.module_from_spec(spec)
spec.loader.exec_module(services)
services.DEFAULT_BROKER_URL = sys.argv[1]
services.up(rabbitmq=sys.argv[2:] == ["--rabbitmq"])
"""


def up() -> dict[str, str]:
    """Run `up` in a process of its own; the environment its `export` lines give, as bin/test evaluates them."""
    env = {name: value for name, value in os.environ.items() if name != "CELERY_BROKER_URL"}
    nowhere = f"redis://127.0.0.1:{free_port()}/15"
    result = subprocess.run(
        [sys.executable, "-c", UP_WITHOUT_A_LOCAL_REDIS, nowhere],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "started a throwaway Redis" in result.stderr, result.stderr
    exports = dict(shlex.split(line)[1].split("=", 1) for line in result.stdout.splitlines())
    return {**env, **exports}


def down(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "bin/services.py", "down"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def runs() -> Iterator[list[dict[str, str]]]:
    """Two runs' environments; whatever Redis of theirs still answers at the end is shut down."""
    started: list[dict[str, str]] = []
    yield started
    for env in started:
        if answers(env["CELERY_BROKER_URL"]):
            redis.Redis.from_url(env["CELERY_BROKER_URL"]).shutdown(nosave=True)


def test_two_runs_each_stop_their_own_throwaway_servers_and_only_those(runs: list[dict[str, str]]) -> None:
    runs += [up(), up()]
    first, second = runs
    assert first["CELERY_BROKER_URL"] != second["CELERY_BROKER_URL"]
    assert answers(first["CELERY_BROKER_URL"]) and answers(second["CELERY_BROKER_URL"])

    down(second)

    wait_for(lambda: not answers(second["CELERY_BROKER_URL"]), 10, 0.05, "the second run's Redis to stop")
    assert answers(first["CELERY_BROKER_URL"]), "the second run's down stopped the first run's Redis"

    down(first)

    wait_for(lambda: not answers(first["CELERY_BROKER_URL"]), 10, 0.05, "the first run's Redis to stop")
    down(first)  # a second down (bin/test's two traps) finds nothing left to do
    # Each run's record was a file of its own, and its down removed it.
    states = [run["TEST_SERVICES_STATE"] for run in runs]
    assert len(set(states)) == 2 and not any(os.path.exists(state) for state in states), states


def test_an_up_that_fails_part_way_stops_the_servers_it_had_started() -> None:
    # A throwaway Redis starts, then the RabbitMQ named by TEST_RABBITMQ_URL does not answer: up exits.
    env = {name: value for name, value in os.environ.items() if name != "CELERY_BROKER_URL"}
    env["TEST_RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    result = subprocess.run(
        [sys.executable, "-c", UP_WITHOUT_A_LOCAL_REDIS, f"redis://127.0.0.1:{free_port()}/15", "--rabbitmq"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0 and "no RabbitMQ answers there" in result.stderr, result.stderr
    [port] = re.findall(r"started a throwaway Redis on port (\d+)", result.stderr)
    wait_for(lambda: not answers(f"redis://127.0.0.1:{port}/15"), 10, 0.05, "the throwaway Redis to stop")
    assert "stopped the throwaway redis" in result.stderr
    assert result.stdout == ""  # no export lines: bin/test stops there


# --- services.py vhost NAME: bin/bench's RabbitMQ half on a vhost of its own ----------------------------------


def make_vhost(env: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bin/services.py", "vhost", name],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.rabbitmq
@pytest.mark.only_on_broker("rabbitmq")
def test_vhost_makes_a_vhost_the_urls_user_can_use_and_prints_its_url() -> None:
    from django.conf import settings
    from kombu import Connection

    from tests.support.broker import rabbitmqctl

    url = settings.CELERY_BROKER_URL  # the RabbitMQ pass's: a throwaway node's, or this machine's
    name = f"test-bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TEST_RABBITMQ_URL": url}
    try:
        made = make_vhost(env, name)
        assert made.returncode == 0, made.stderr
        printed = made.stdout.strip()
        assert urlsplit(printed)._replace(path="") == urlsplit(url)._replace(path="")
        assert urlsplit(printed).path == f"/{name}"
        # The URL's user may declare, publish and read there.
        with Connection(printed) as connection, connection.SimpleQueue("probe") as queue:
            queue.put({"n": 1})
            message = queue.get(timeout=10)
            message.ack()
            assert message.payload == {"n": 1}
        # Asked again (the next bench): the same URL, nothing refused.
        again = make_vhost(env, name)
        assert (again.returncode, again.stdout.strip()) == (0, printed), again.stderr
    finally:
        rabbitmqctl(url, "delete_vhost", name)


def test_vhost_without_rabbitmqctl_exits_1_saying_why() -> None:
    env = {"PATH": "/nonexistent", "TEST_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    result = make_vhost(env, "backoffice_bench")

    assert result.returncode == 1 and result.stdout == ""
    assert "services: rabbitmqctl add_vhost failed" in result.stderr, result.stderr
