"""What every benchmark needs: a database of its own, real worker processes, an SMTP sink, RSS and medians.

The bench runs against the same PostgreSQL and Redis as the tests (bin/services.py
finds or starts them), in a database (`backoffice_bench`) and a Redis database
number (14) of its own, so it never touches an app's or the test suite's data.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALL_QUEUES = "high_priority,default,low_priority"
BENCH_DATABASE = "backoffice_bench"
BENCH_REDIS_DB = 14
# Documented bench settings (README "Performance"): values any user could set.
PRODUCT_ENV = {
    "PAYMENT_SANDBOX_LATENCY_MS": "0",
    "EMAIL_RATE_LIMIT": "off",
    # Scenarios that send mail point it at their SMTP sink; DEBUG is off, so it must be set.
    "EMAIL_URL": "dummy://",
    "DEBUG": "0",
}


class RoundFailed(Exception):
    """A round did not finish (timeout or a process died); reported, never hidden."""


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RoundFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- environment --------------------------------------------------------------------------


def bench_urls() -> tuple[str, str]:
    """DATABASE_URL and CELERY_BROKER_URL for the bench: the services' servers, bench database and Redis db.

    A RabbitMQ URL (bin/bench's second pass) is used as given: its vhost is the bench's.
    """
    database = urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{BENCH_DATABASE}").geturl()
    broker = os.environ["CELERY_BROKER_URL"]
    if not broker.startswith(("amqp://", "amqps://")):
        broker = urlsplit(broker)._replace(path=f"/{BENCH_REDIS_DB}").geturl()
    return database, broker


_LOCK = Path(tempfile.gettempdir()) / "backoffice-bench.lock"


def _one_bench_at_a_time() -> None:
    """Two runs would drop each other's database (and share two cores); the second one stops here."""
    import fcntl

    handle = _LOCK.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"bench: another benchmark is running (lock {_LOCK}); wait for it to finish.")
    atexit.register(handle.close)  # keeps the lock for the life of this process


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the `with` blocks stop the workers, servers and sinks they started.

    They run in sessions of their own (a Ctrl-C in the terminal must not reach
    a worker mid-round), so nothing else would stop them when the bench is killed.
    """

    def leave(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping the processes this run started")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def prepare_environment() -> dict[str, str]:
    """Point this process at a fresh bench database and Redis db, migrate, and return the env for children."""
    import psycopg

    _one_bench_at_a_time()
    database_url, broker_url = bench_urls()
    parts = urlsplit(database_url)
    admin = psycopg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    data_dir = tempfile.mkdtemp(prefix="backoffice-bench-")
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    os.environ.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-" + os.urandom(16).hex(),
        DATA_DIR=data_dir,
        **PRODUCT_ENV,
    )
    import django

    django.setup()
    # The processes measured log as users get them (to their own files); this
    # one, which places orders and starts rounds, only says what went wrong.
    logging.getLogger().setLevel(logging.WARNING)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    # As the Docker image does: DEBUG is off, so pages need the collected, hashed static files.
    call_command("collectstatic", interactive=False, verbosity=0)
    flush_broker()
    return dict(os.environ)


def flush_broker() -> None:
    import redis
    from django.conf import settings

    if settings.BROKER_IS_RABBITMQ:
        _purge_rabbitmq()
        return
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    client.close()


def _purge_rabbitmq() -> None:
    """Empty the project's queues and RabbitMQ's delay queues on the bench's vhost (missing ones are skipped)."""
    from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

    from config import celery_app
    from ops.catalog import queue_names

    with celery_app.connection_for_write() as connection:
        for queue in [*queue_names(), *(level_name(level) for level in range(MAX_LEVEL + 1))]:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except connection.channel_errors:
                pass  # not declared yet: nothing to empty
            finally:
                with contextlib.suppress(Exception):
                    channel.close()


def reset_tables(*labels: str) -> None:
    """Empty tables between rounds (TRUNCATE ... CASCADE), so every round starts alike."""
    from django.apps import apps
    from django.db import connection

    tables = [apps.get_model(label)._meta.db_table for label in labels]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


# --- processes ----------------------------------------------------------------------------


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


# What the bench measured as "today's" configuration before issue 19: one prefork
# worker, as many processes as cores, all three queues.
PREFORK_TODAY = (WorkerSpec(ALL_QUEUES, "prefork", 2),)


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
