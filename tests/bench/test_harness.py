"""The bench's process handling: killing a run stops what it started."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.processes import PROJECT_ROOT, wait_for

RUN = textwrap.dedent(
    """
    import os, time
    from bench import harness, processes
    harness.exit_on_sigterm()
    with processes.smtp_sink(dict(os.environ)) as sink:
        print(sink.popen.pid, flush=True)
        time.sleep(120)
    """
)


def test_a_bench_killed_with_sigterm_stops_the_servers_it_started() -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", RUN], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        sink_pid = int(run.stdout.readline())
        assert Path(f"/proc/{sink_pid}").exists()

        run.send_signal(signal.SIGTERM)

        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        wait_for(lambda: not _running(sink_pid), 10, 0.1, "the SMTP sink to stop")
        assert "stopping the processes this run started" in run.stderr.read()
    finally:
        run.kill()
        run.wait()


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_bench_takes_a_redis_database_of_its_own_and_a_rabbitmq_url_as_given(monkeypatch) -> None:
    from bench import harness

    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/backoffice")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    assert harness.bench_urls() == (
        "postgres://postgres@127.0.0.1:5432/backoffice_bench",
        f"redis://127.0.0.1:6379/{harness.BENCH_REDIS_DB}",
    )
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/bench")  # bin/bench's second pass
    assert harness.bench_urls()[1] == "amqp://guest:guest@127.0.0.1:5672/bench"
