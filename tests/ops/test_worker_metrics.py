"""Each worker's own metrics endpoint, against real worker processes (prefork children and a threads pool)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.support import tasks
from tests.support.processes import WorkerProcess, free_port, wait_for
from tests.support.promtool import promtool

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOKEN = "worker-metrics-token"


class MetricsWorker(WorkerProcess):
    """A worker with its metrics endpoint on a free port, running the tests' own tasks too."""

    def __init__(self, env: dict[str, str], pool: str = "prefork", concurrency: int = 2) -> None:
        self.port = free_port()
        env = {**env, "WORKER_METRICS_PORT": str(self.port), "METRICS_TOKEN": TOKEN}
        super().__init__(env, pool=pool, concurrency=concurrency, extra=tasks.INCLUDE)

    def scrape(self, token: str | None = TOKEN) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.read().decode()

    def value(self, sample_name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def outcomes(self, task: str, outcome: str) -> float:
        return self.value("backoffice_worker_tasks_total", task=task.name, outcome=outcome)


def wait_for_outcome(worker: MetricsWorker, task: object, outcome: str, count: int) -> None:
    wait_for(lambda: worker.outcomes(task, outcome) >= count, 30, 0.2, f"{count} {outcome} of {task.name}")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_worker_counts_each_outcome_once_times_its_tasks_and_shows_what_runs_now(
    process_env, broker, celery_app, pool: str
) -> None:
    with MetricsWorker(process_env, pool=pool) as worker:
        worker.wait_ready(celery_app)
        for _ in range(3):
            tasks.succeeds.delay()
        for _ in range(2):
            tasks.always_fails.delay()
        tasks.rejects.delay()
        tasks.retries_once.delay()
        tasks.succeeds.apply_async(expires=timezone.now() - timedelta(seconds=1))

        wait_for_outcome(worker, tasks.succeeds, "succeeded", 3)
        wait_for_outcome(worker, tasks.always_fails, "failed", 2)
        wait_for_outcome(worker, tasks.rejects, "rejected", 1)
        wait_for_outcome(worker, tasks.retries_once, "succeeded", 1)
        wait_for_outcome(worker, tasks.succeeds, "expired", 1)

        assert worker.outcomes(tasks.succeeds, "succeeded") == 3
        assert worker.outcomes(tasks.always_fails, "failed") == 2
        assert worker.outcomes(tasks.rejects, "failed") == 0  # a rejection is not also a failure
        assert worker.outcomes(tasks.retries_once, "retried") == 1
        assert (
            worker.value("backoffice_worker_task_failures_total", task=tasks.always_fails.name, exception="ValueError")
            == 2
        )
        # Every run in the pool is timed; the expired message never ran.
        assert worker.value("backoffice_worker_task_duration_seconds_count", task=tasks.succeeds.name) == 3
        assert worker.value("backoffice_worker_task_duration_seconds_sum", task=tasks.succeeds.name) > 0

        tasks.sleeps.delay(3)
        wait_for(
            lambda: worker.value("backoffice_worker_tasks_running", task=tasks.sleeps.name) == 1,
            30,
            0.1,
            "the sleeping task to show as running",
        )
        wait_for_outcome(worker, tasks.sleeps, "succeeded", 1)
        assert worker.value("backoffice_worker_tasks_running", task=tasks.sleeps.name) == 0

        linted = promtool("check", "metrics", stdin=worker.scrape())
        assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_main_process_counts_a_child_lost_mid_task_and_keeps_the_dead_childs_counts(
    process_env, broker, celery_app
) -> None:
    with MetricsWorker(process_env, concurrency=1) as worker:
        worker.wait_ready(celery_app)
        tasks.succeeds.delay()
        wait_for_outcome(worker, tasks.succeeds, "succeeded", 1)
        tasks.hangs_once.delay(30)
        wait_for(
            lambda: worker.value("backoffice_worker_tasks_running", task=tasks.hangs_once.name) == 1,
            30,
            0.1,
            "the task to run",
        )
        (child,) = worker.child_pids()
        os.kill(child, signal.SIGKILL)
        # task_retry_on_worker_lost: the main process retries it, and a new child runs the retry.
        wait_for_outcome(worker, tasks.hangs_once, "retried", 1)
        wait_for_outcome(worker, tasks.hangs_once, "succeeded", 1)
        assert worker.child_pids() != [child]
        assert worker.outcomes(tasks.succeeds, "succeeded") == 1  # counted by the child that was killed
        assert worker.value("backoffice_worker_tasks_running", task=tasks.hangs_once.name) == 0


def test_the_endpoint_wants_the_token_and_answers_only_on_metrics(process_env, broker, celery_app) -> None:
    with MetricsWorker(process_env, concurrency=1) as worker:
        worker.wait_ready(celery_app)
        for token in (None, "wrong"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                worker.scrape(token)
            assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/", timeout=5)
        assert missing.value.code == 404
        text = worker.scrape()
        # Every project task is listed as running 0, so its series exists before it first runs.
        assert 'backoffice_worker_tasks_running{task="orders.tasks.process_order"} 0.0' in text


def test_a_worker_whose_metrics_port_is_taken_still_runs_tasks(process_env, broker, celery_app) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**process_env, "WORKER_METRICS_PORT": str(taken.getsockname()[1])}
        with WorkerProcess(env, concurrency=1, extra=tasks.INCLUDE) as worker:
            worker.wait_ready(celery_app)
            assert tasks.succeeds.delay().get(timeout=30) == "ok"
            assert "worker metrics: cannot listen on" in worker.output()


def test_a_worker_removes_its_metrics_directory_and_those_of_workers_killed_outright(
    process_env, broker, celery_app
) -> None:
    temp = Path(tempfile.gettempdir())
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = temp / f"worker-metrics-{ended.pid}-killed"
    alive = temp / f"worker-metrics-{os.getpid()}-running"
    dead.mkdir()
    alive.mkdir()
    try:
        with MetricsWorker(process_env, concurrency=1) as worker:
            worker.wait_ready(celery_app)
            (own,) = temp.glob(f"worker-metrics-{worker.pid}-*")
            assert not dead.exists()
            assert alive.exists()  # its process still runs
        assert not own.exists()
    finally:
        for path in (dead, alive):
            if path.exists():
                path.rmdir()
