"""Redis behind Sentinel: sentinel:// URLs, the master name from CELERY_BROKER_SENTINEL_MASTER, a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from django_celery_results.models import TaskResult
from kombu import Connection

from tests.support.processes import PROJECT_ROOT, WorkerProcess, free_port, wait_for
from tests.support.servers import RedisServer, SentinelServer

MASTER = "backoffice-test"


@pytest.fixture
def sentinel() -> Iterator[SentinelServer]:
    with RedisServer() as master, SentinelServer(master, MASTER) as sentinel:
        yield sentinel


def sentinel_url(sentinel: SentinelServer) -> str:
    # The first sentinel listed is down: the client asks the next one, as it would in a failover.
    return f"sentinel://127.0.0.1:{free_port()}/0;sentinel://127.0.0.1:{sentinel.port}/0"


def test_a_real_worker_runs_a_task_through_sentinel(process_env: dict[str, str], sentinel: SentinelServer) -> None:
    env = {**process_env, "CELERY_BROKER_URL": sentinel_url(sentinel), "CELERY_BROKER_SENTINEL_MASTER": MASTER}

    with WorkerProcess(env) as worker:
        worker.wait_started()
        sent = subprocess.run(
            [sys.executable, "manage.py", "run_task", "ops.tasks.cleanup_failures", "--wait", "--timeout", "60"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr + worker.output()[-3000:]

    row = TaskResult.objects.get(task_name="ops.tasks.cleanup_failures")
    assert row.status == "SUCCESS"
    assert json.loads(row.result) == 0
    assert row.worker == worker.nodename
    # The queues live on the master the sentinel named, not on the suite's Redis.
    master = redis.Redis(port=sentinel.master.port)
    assert master.keys("_kombu.binding.*")


def run_task(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "run_task", "ops.tasks.cleanup_failures", "--wait", "--timeout", "90"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_a_worker_follows_a_sentinel_failover_and_keeps_taking_work(process_env: dict[str, str]) -> None:
    with (
        RedisServer() as master,
        RedisServer(extra=["--replicaof", "127.0.0.1", str(master.port)]) as replica,
        SentinelServer(master, MASTER) as sentinel,
    ):
        watcher = redis.Redis(port=sentinel.port, decode_responses=True)

        def knows_the_replica() -> bool:
            return any(
                r["port"] == replica.port and "s_down" not in r["flags"] for r in watcher.sentinel_slaves(MASTER)
            )

        wait_for(knows_the_replica, 60, 0.2, "the sentinel to find the replica")
        env = {**process_env, "CELERY_BROKER_URL": sentinel_url(sentinel), "CELERY_BROKER_SENTINEL_MASTER": MASTER}
        with WorkerProcess(env) as worker:
            worker.wait_started()
            before = run_task(env)
            assert before.returncode == 0, before.stderr + worker.output()[-3000:]

            master.process.kill()  # a crash: the master is gone, the sentinel promotes the replica
            master.process.wait()
            wait_for(
                lambda: watcher.sentinel_get_master_addr_by_name(MASTER) == ("127.0.0.1", replica.port),
                60,
                0.2,
                "the sentinel to promote the replica",
            )

            after = run_task(env)
            assert after.returncode == 0, after.stderr + worker.output()[-3000:]
            assert worker.alive()

    done = TaskResult.objects.filter(task_name="ops.tasks.cleanup_failures", status="SUCCESS")
    assert list(done.values_list("worker", flat=True)) == [worker.nodename, worker.nodename]


def test_a_sentinel_channel_shares_one_redis_client_on_the_master(sentinel: SentinelServer) -> None:
    options = {"master_name": MASTER}
    with Connection(
        sentinel_url(sentinel), transport="ops.broker:SentinelTransport", transport_options=options
    ) as conn:
        channel = conn.default_channel
        assert type(channel).__qualname__ == "SentinelChannel"
        assert type(channel).__module__ == "ops.broker"
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
            assert first.connection_pool.get_master_address() == ("127.0.0.1", sentinel.master.port)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"CELERY_BROKER_URL": "sentinel://127.0.0.1:26379"}, "CELERY_BROKER_SENTINEL_MASTER is required"),
        ({"CELERY_BROKER_URL": "redis+cluster://127.0.0.1:7000/0"}, "kombu#732"),
        ({"CELERY_BROKER_URL": "rediscluster://127.0.0.1:7000"}, "Redis Cluster"),
        ({"CELERY_BROKER_URL": "redis://127.0.0.1:7000/0?cluster=true"}, "Redis Cluster"),
    ],
)
def test_it_refuses_sentinel_without_a_master_name_and_redis_cluster_with_a_reason(
    values: dict[str, str], message: str
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CELERY_BROKER_SENTINEL_MASTER"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT_ROOT,
        env={**env, **values},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line
    assert message in last_line


def test_describe_setup_names_the_sentinel_master_and_shows_no_password(tmp_path) -> None:
    url = "sentinel://:s3cret@10.0.0.1:26379/0;sentinel://:s3cret@10.0.0.2:26379/0"
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_BROKER_SENTINEL_MASTER": MASTER, "DATA_DIR": str(tmp_path)}

    result = subprocess.run(
        [sys.executable, "manage.py", "describe_setup"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    assert f"Redis through Sentinel, master {MASTER!r}, at sentinel://:***@10.0.0.1:26379/0;" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
