"""Real worker, beat and web processes for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALL_QUEUES = "high_priority,default,low_priority"


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.1, message: str = "") -> object:
    """Poll until condition() is truthy and return its value; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A child process in its own session, with its output kept in a log file."""

    # Every process started and not yet stopped; the suite fails a test that leaves one running.
    running: set[ManagedProcess] = set()

    def __init__(self, args: Sequence[str], env: dict[str, str], label: str, cwd: Path = PROJECT_ROOT) -> None:
        self.args = list(args)
        self.env = env
        self.label = label
        self.cwd = cwd
        self.log_path = Path(tempfile.mkstemp(prefix=f"{label}-", suffix=".log")[1])
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self.alive():  # a second Popen would orphan the first, which then runs on unseen
            raise RuntimeError(f"{self.label} is already running (pid {self.pid})")
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        ManagedProcess.running.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started, like a machine losing the container."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        ManagedProcess.running.discard(self)

    def stop(self, timeout: float = 30) -> int | None:
        """Ask the process to stop (SIGTERM); kill it if it does not stop within timeout."""
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.kill_group()
        return self.popen.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if exc_info[0] is not None:
            sys.stderr.write(f"\n--- last output of {self.label} ---\n{self.output()[-6000:]}\n")


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "config", *args]


def shipped_worker(service: str) -> dict[str, object]:
    """The queues, pool and concurrency compose ships for a worker service (e.g. worker-default), from its command."""
    import shlex

    import yaml

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    words = shlex.split(compose["services"][service]["command"])
    return {
        "queues": words[words.index("-Q") + 1],
        "pool": words[words.index("-P") + 1],
        "concurrency": int(words[words.index("-c") + 1]),
    }


# The worker services that run orders and their emails; the fault suite runs them as shipped.
PIPELINE_WORKERS = ("worker-default", "worker-high")


class WorkerProcess(ManagedProcess):
    """`celery worker` as a real process (prefork unless told otherwise)."""

    def __init__(
        self,
        env: dict[str, str],
        queues: str = ALL_QUEUES,
        concurrency: int = 2,
        pool: str = "prefork",
        extra: Sequence[str] = (),
    ) -> None:
        self.nodename = f"test-{uuid.uuid4().hex[:8]}@localhost"
        args = celery_command(
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            self.nodename,
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            *extra,
        )
        super().__init__(args, env, label="worker")

    @classmethod
    def shipped(cls, env: dict[str, str], service: str) -> WorkerProcess:
        """A worker as compose runs `service` (queues, pool and concurrency from docker-compose.yml)."""
        return cls(env, **shipped_worker(service))  # type: ignore[arg-type]

    def wait_ready(self, app: object, timeout: float = 60) -> WorkerProcess:
        def answered() -> bool:
            if not self.alive():
                raise AssertionError(f"worker exited early:\n{self.output()[-4000:]}")
            return bool(app.control.ping(destination=[self.nodename], timeout=0.5))  # type: ignore[attr-defined]

        wait_for(answered, timeout, interval=0.2, message=f"worker {self.nodename} to answer ping")
        return self

    def wait_started(self, timeout: float = 60) -> WorkerProcess:
        """Wait for the worker's "ready" line; for workers on a broker the test app cannot ping."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"worker exited early:\n{self.output()[-4000:]}")
            return f"{self.nodename} ready." in self.output()

        wait_for(ready, timeout, 0.2, f"worker {self.nodename} to be ready")
        return self

    def stop(self, timeout: float = 30) -> int | None:
        returncode = super().stop(timeout)
        self._delete_direct_queue()
        return returncode

    def _delete_direct_queue(self) -> None:
        """On RabbitMQ, delete the worker's own durable queue (<node>.dq2), which would outlive it on the vhost."""
        url = self.env.get("CELERY_BROKER_URL", "")
        if not url.startswith(("amqp://", "amqps://")):
            return  # on Redis it is a list that disappears with its last message
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
            connection.default_channel.queue_delete(f"{self.nodename}.dq2")

    def child_pids(self) -> list[int]:
        """The pool's child processes (pids whose parent is the worker)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []


class BeatProcess(ManagedProcess):
    """`celery beat -S django` as a real process."""

    def __init__(self, env: dict[str, str], extra: Sequence[str] = ()) -> None:
        args = celery_command("beat", "-S", "django", "--loglevel", "INFO", *extra)
        super().__init__(args, env, label="beat")
