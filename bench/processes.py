"""The processes a benchmark starts and measures: workers (by pool, concurrency and queues), the SMTP sink.

Each runs in a session of its own with its output in a file, is stopped with
SIGTERM then SIGKILL for its whole process group, and reports its peak RSS and
CPU time from /proc while it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ALL_QUEUES, PIPELINE_QUEUES, PROJECT_ROOT, RoundFailed, wait_until


@dataclass
class Process:
    args: list[str]
    env: dict[str, str]
    label: str
    popen: subprocess.Popen | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="bench-", suffix=".log")[1]))

    def start(self) -> Process:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args, cwd=PROJECT_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.popen is None:
            return
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory a process has had, in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []


@dataclass(frozen=True)
class WorkerSpec:
    """One `celery worker` command line's choices: which queues, which pool, how many tasks at once."""

    queues: str = ALL_QUEUES
    pool: str = "prefork"
    concurrency: int = 2

    @property
    def label(self) -> str:
        return f"{self.pool} -c {self.concurrency} ({self.queues})"


# What the bench measures as "today's" configuration, before issue 19: prefork, as many
# processes as cores, taking the pipeline's queues (orders and their emails).
PREFORK_TODAY = (WorkerSpec(PIPELINE_QUEUES, "prefork", 2),)


def shipped_workers(*services: str) -> tuple[WorkerSpec, ...]:
    """The pool, concurrency and queues of compose's worker services, read from docker-compose.yml itself."""
    import shlex

    import yaml

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    specs = []
    for service in services:
        words = shlex.split(compose["services"][service]["command"])
        specs.append(
            WorkerSpec(
                queues=words[words.index("-Q") + 1],
                pool=words[words.index("-P") + 1],
                concurrency=int(words[words.index("-c") + 1]),
            )
        )
    return tuple(specs)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker(Process):
    """`celery worker` as in production: the project's settings, the pool, concurrency and queues it is given."""

    def __init__(
        self, env: dict[str, str], concurrency: int = 2, extra: Sequence[str] = (), spec: WorkerSpec | None = None
    ) -> None:
        spec = spec or WorkerSpec(ALL_QUEUES, "prefork", concurrency)
        self.spec = spec
        self.nodename = f"bench-{os.urandom(4).hex()}@localhost"
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            spec.queues,
            "-c",
            str(spec.concurrency),
            "-P",
            spec.pool,
            "-n",
            self.nodename,
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
            *extra,
        ]
        super().__init__(args, env, "worker")

    def wait_ready(self, timeout: float = 60) -> Worker:
        from config import celery_app

        def ready() -> bool:
            if not self.alive():
                raise RoundFailed(f"worker exited early:\n{self.output()[-3000:]}")
            # A fresh connection per ping (see ops.health.workers for why).
            with celery_app.connection_for_write() as conn:
                return bool(celery_app.control.ping([self.nodename], timeout=0.2, connection=conn))

        wait_until(ready, timeout, "the worker to start", 0.05)
        return self

    def pids(self) -> list[int]:
        assert self.popen is not None
        return [self.popen.pid, *children(self.popen.pid)]

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak RSS of the main process, the largest pool child and all of them; read before stopping."""
        assert self.popen is not None
        pool = [peak_rss_mb(child) for child in children(self.popen.pid)]
        main = peak_rss_mb(self.popen.pid)
        return {"main": round(main, 1), "child": round(max(pool, default=0.0), 1), "total": round(main + sum(pool), 1)}

    def cpu_seconds(self) -> float:
        """CPU time of the main process and its live pool children so far; read before stopping."""
        return sum(cpu_seconds(pid) for pid in self.pids())


@contextlib.contextmanager
def running_worker(env: dict[str, str], concurrency: int = 2, extra: Sequence[str] = ()) -> Iterator[Worker]:
    worker = Worker(env, concurrency, extra).start()
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


@contextlib.contextmanager
def running_workers(env: dict[str, str], specs: Sequence[WorkerSpec]) -> Iterator[list[Worker]]:
    """Start one worker per spec (the processes of a configuration) and stop them all afterwards."""
    workers: list[Worker] = []
    try:
        for spec in specs:
            workers.append(Worker(env, spec=spec).start())
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


POSTFIX_SMTP_SINK = "/usr/sbin/smtp-sink"


def smtp_server_name() -> str:
    return "postfix smtp-sink" if Path(POSTFIX_SMTP_SINK).exists() else "aiosmtpd"


class SmtpSink(Process):
    """A local SMTP server that accepts every message and keeps none.

    Postfix's smtp-sink (written in C for exactly this: measuring SMTP clients)
    when it is installed, so the server is not what limits the measurement; on a
    machine without it, aiosmtpd in a process of its own. Results say which.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        if smtp_server_name() == "postfix smtp-sink":
            args = [POSTFIX_SMTP_SINK, *(["-u", "nobody"] if os.getuid() == 0 else []), f"127.0.0.1:{self.port}", "256"]
        else:
            args = [sys.executable, "-m", "bench.smtp_sink", str(self.port)]
        super().__init__(args, env, "smtp")

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def wait_ready(self) -> SmtpSink:
        import socket

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
            return False

        wait_until(answers, 20, "the SMTP sink")
        return self


@contextlib.contextmanager
def smtp_sink(env: dict[str, str]) -> Iterator[SmtpSink]:
    sink = SmtpSink(env).start()
    try:
        yield sink.wait_ready()
    finally:
        sink.stop()
