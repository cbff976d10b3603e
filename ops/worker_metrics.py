"""Each worker's own task metrics: counts by outcome, a duration histogram and tasks running now.

Why an exporter in every worker (prometheus_client's multiprocess mode) and not
an exporter that reads the workers' task events:

- Counts are exact. They are taken in the process where the task ran, from
  Celery's signals. Events travel over the broker's fan-out (Redis pub/sub):
  whatever is sent while the event exporter restarts, reconnects or lags is
  gone, and its counters silently fall short. An outcome seen only from events
  also needs the task-received event of the same task to know the task's name.
- A worker whose endpoint does not answer is itself a signal (Prometheus' `up`),
  and workers scale out with no extra process to keep alive: Prometheus finds
  them (compose: one DNS name per worker service, every replica behind it).
- Durations are measured where the task runs, from task_prerun to task_postrun.

The cost is one port per worker (WORKER_METRICS_PORT) and a directory of
memory-mapped files per worker. Both are handled here:

- Prefork: pool children are separate processes, forked at any time (and again
  after max-tasks-per-child). Each child writes its counters to files of its own
  pid in PROMETHEUS_MULTIPROC_DIR; the exporter in the main process adds them up
  (counters of children that died stay counted, as they must). The directory is
  made fresh for each worker at start (celeryd_init, before any child is forked)
  and removed at shutdown, so two workers on one machine never mix; the
  directory of a worker that was killed outright goes at the next worker's start.
- Some outcomes happen in the main process only (a child lost or killed at its
  hard time limit, a revoked or expired message, an unknown task): they are
  counted there, through the same files. Each outcome has exactly one signal,
  sent once, in whichever process saw it, so nothing is counted twice.
- Threads (or solo) pools run tasks in the main process: the same signals fire
  there, and the files simply all carry one pid. Nothing depends on the pool.
- Tasks running now are read at scrape time from the worker's own list of
  active requests (what `celery inspect active` shows), so a child that died
  mid-task cannot leave a gauge stuck at 1.

Metrics are always collected (a few microseconds per task); WORKER_METRICS_PORT
decides only whether they are served over HTTP (with METRICS_TOKEN as a bearer
token when it is set). The admin overview reads the same figures through a
broadcast (`task_metrics`), for shops that run no Prometheus.

Business failures (part 1 of issue 17): a task whose work failed for good but
which returns normally can call `record_outcome(task_name, "failed", error_type)`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import Task, signals
from celery.exceptions import Reject
from celery.worker.control import inspect_command
from django.conf import settings

logger = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "failed", "retried", "rejected", "revoked", "expired", "ignored")
# From the fastest tasks (a sweep that finds nothing, about 5 ms) to the longest time limit (11 minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 660)
POSTRUN_OUTCOMES = {"REJECTED": "rejected", "IGNORED": "ignored"}
UNKNOWN_TASK = "(unknown)"
# Under the temporary directory, followed by the worker's pid: "worker-metrics-4242-x1y2z3".
DIRECTORY_PREFIX = "worker-metrics-"


class WorkerMetrics:
    """The metric objects of one worker, writing to its multiprocess directory."""

    def __init__(self, directory: str) -> None:
        from prometheus_client import Counter as PromCounter
        from prometheus_client import Histogram

        self.directory = directory
        self.tasks = PromCounter(
            "backoffice_worker_tasks", "Tasks this worker finished, by outcome.", ["task", "outcome"], registry=None
        )
        self.failures = PromCounter(
            "backoffice_worker_task_failures", "Failed tasks by exception type.", ["task", "exception"], registry=None
        )
        self.duration = Histogram(
            "backoffice_worker_task_duration_seconds",
            "Run time of tasks in the pool, any outcome.",
            ["task"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        # task id -> monotonic start, for task_prerun -> task_postrun in the process running it
        self.started: dict[str, float] = {}

    def registry(self) -> Any:
        """A registry that adds up every process's files and the tasks running now."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=self.directory)
        registry.register(RunningTasks())
        return registry


_metrics: WorkerMetrics | None = None
_server: WSGIServer | None = None


def record_outcome(task_name: str, outcome: str, error_type: str = "") -> None:
    """Count one outcome of a task (a no-op outside a worker)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"{outcome!r} is not an outcome; use one of {', '.join(OUTCOMES)}.")
    if _metrics is None:
        return
    _metrics.tasks.labels(task=task_name, outcome=outcome).inc()
    if outcome == "failed":
        _metrics.failures.labels(task=task_name, exception=error_type or "Exception").inc()


def running_tasks() -> Counter[str]:
    """Tasks this worker's pool is running now, by name (the list `celery inspect active` reads)."""
    from celery.worker import state

    # list() copies the set in one C call, safe against the consumer thread changing it.
    return Counter(request.name for request in list(state.active_requests))


class RunningTasks:
    """Collector of backoffice_worker_tasks_running, 0 for every project task not running."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from ops.catalog import project_tasks

        running = running_tasks()
        gauge = GaugeMetricFamily("backoffice_worker_tasks_running", "Tasks running now.", labels=["task"])
        for name in sorted(set(project_tasks()) | set(running)):
            gauge.add_metric([name], running.get(name, 0))
        yield gauge


# --- start and stop (main process) ---------------------------------------------------------


@signals.celeryd_init.connect(dispatch_uid="ops.worker_metrics.prepare")
def prepare(**kwargs: Any) -> None:
    """Make this worker's metrics directory before the pool forks, and the metric objects on it."""
    global _metrics
    _remove_directories_of_dead_workers()
    directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    # prometheus_client picks its value class from the environment when it is
    # first imported; look again, in case something imported it before this.
    values.ValueClass = values.get_value_class()
    _metrics = WorkerMetrics(directory)


def _remove_directories_of_dead_workers() -> None:
    """A worker killed outright (SIGKILL, OOM) cannot remove its directory at shutdown; the next one does."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*-*"):
        pid = path.name.removeprefix(DIRECTORY_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


@signals.worker_ready.connect(dispatch_uid="ops.worker_metrics.serve")
def serve(**kwargs: Any) -> None:
    """Serve GET /metrics on WORKER_METRICS_HOST:WORKER_METRICS_PORT, in a thread of the main process."""
    global _server
    if _metrics is None or not settings.WORKER_METRICS_PORT:
        return
    host, port = settings.WORKER_METRICS_HOST, settings.WORKER_METRICS_PORT
    try:
        _server = make_server(host, port, metrics_app(_metrics), _server_class(host), handler_class=_QuietHandler)
    except OSError as exc:
        # The worker's job is its tasks; Prometheus will show this target down.
        logger.error("worker metrics: cannot listen on %s:%s: %s", host, port, exc)
        return
    threading.Thread(target=_server.serve_forever, name="worker-metrics", daemon=True).start()
    logger.info("worker metrics on http://%s:%s/metrics", host, port)


@signals.worker_process_init.connect(dispatch_uid="ops.worker_metrics.child_closes_listener")
def child_closes_listener(**kwargs: Any) -> None:
    """A forked pool child inherits the listening socket; only the main process answers on it."""
    if _server is not None:
        with contextlib.suppress(OSError):
            _server.socket.close()


@signals.worker_shutdown.connect(dispatch_uid="ops.worker_metrics.stop")
def stop(**kwargs: Any) -> None:
    global _metrics, _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    if _metrics is not None:
        shutil.rmtree(_metrics.directory, ignore_errors=True)
        _metrics = None


# --- counting (whichever process sees the outcome) -------------------------------------------


@signals.task_prerun.connect(dispatch_uid="ops.worker_metrics.prerun")
def _prerun(task_id: str | None = None, **kwargs: Any) -> None:
    if _metrics is not None and task_id:
        _metrics.started[task_id] = time.monotonic()


@signals.task_postrun.connect(dispatch_uid="ops.worker_metrics.postrun")
def _postrun(sender: Task | None = None, task_id: str | None = None, state: str | None = None, **kwargs: Any) -> None:
    if _metrics is None or sender is None:
        return
    started = _metrics.started.pop(task_id, None) if task_id else None
    if started is not None:
        _metrics.duration.labels(task=sender.name).observe(time.monotonic() - started)
    if state in POSTRUN_OUTCOMES:  # a task that raised Reject or Ignore: no other signal says so
        record_outcome(sender.name, POSTRUN_OUTCOMES[state])


@signals.task_success.connect(dispatch_uid="ops.worker_metrics.success")
def _success(sender: Task | None = None, **kwargs: Any) -> None:
    if sender is not None:
        record_outcome(sender.name, "succeeded")


@signals.task_failure.connect(dispatch_uid="ops.worker_metrics.failure")
def _failure(sender: Task | None = None, exception: BaseException | None = None, **kwargs: Any) -> None:
    # Sent once per failure: by the child for an exception in the task, by the main
    # process for a lost child or a hard time limit. A Reject is counted as rejected.
    if sender is not None and not isinstance(exception, Reject):
        record_outcome(sender.name, "failed", type(exception).__name__ if exception else "")


@signals.task_retry.connect(dispatch_uid="ops.worker_metrics.retry")
def _retry(sender: Task | None = None, **kwargs: Any) -> None:
    if sender is not None:
        record_outcome(sender.name, "retried")


@signals.task_revoked.connect(dispatch_uid="ops.worker_metrics.revoked")
def _revoked(sender: Task | None = None, request: Any = None, expired: bool = False, **kwargs: Any) -> None:
    name = getattr(sender, "name", None) or getattr(request, "task", None) or UNKNOWN_TASK
    record_outcome(name, "expired" if expired else "revoked")


@signals.task_unknown.connect(dispatch_uid="ops.worker_metrics.unknown")
def _unknown(name: str | None = None, **kwargs: Any) -> None:
    record_outcome(name or UNKNOWN_TASK, "rejected")


@signals.task_rejected.connect(dispatch_uid="ops.worker_metrics.rejected")
def _rejected(message: Any = None, **kwargs: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    record_outcome(headers.get("task") or UNKNOWN_TASK, "rejected")


# --- reading (main process) -----------------------------------------------------------------


def metrics_app(metrics: WorkerMetrics) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: GET /metrics, with METRICS_TOKEN as a bearer token when it is set."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found: the worker's metrics are at /metrics.\n"]
        token = settings.METRICS_TOKEN
        given = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"Send METRICS_TOKEN as 'Authorization: Bearer <token>'.\n"]
        body = generate_latest(metrics.registry())
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return app


@inspect_command()
def task_metrics(state: Any, **kwargs: Any) -> dict[str, Any]:
    """This worker's task counts by outcome, duration histograms and running tasks (for the admin overview)."""
    if _metrics is None:
        return {}
    from prometheus_client.multiprocess import MultiProcessCollector

    tasks: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return tasks.setdefault(name, {"outcomes": {}, "failures": {}, "buckets": [], "sum": 0.0, "running": 0})

    for family in MultiProcessCollector(None, path=_metrics.directory).collect():
        for sample in family.samples:
            name = sample.labels.get("task", UNKNOWN_TASK)
            if sample.name == "backoffice_worker_tasks_total":
                entry(name)["outcomes"][sample.labels["outcome"]] = sample.value
            elif sample.name == "backoffice_worker_task_failures_total":
                entry(name)["failures"][sample.labels["exception"]] = sample.value
            elif sample.name == "backoffice_worker_task_duration_seconds_bucket":
                entry(name)["buckets"].append([sample.labels["le"], sample.value])
            elif sample.name == "backoffice_worker_task_duration_seconds_sum":
                entry(name)["sum"] = sample.value
    for name, count in running_tasks().items():
        entry(name)["running"] = count
    return {"tasks": tasks}


def _server_class(host: str) -> type[WSGIServer]:
    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would flood the worker's log."""
