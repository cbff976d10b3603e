"""Worker liveness: proof that a worker takes work, not only that it answers pings.

A worker can stay up, answer `inspect ping` (remote control messages bypass the
task consumer and its prefetch limit) and yet fetch no task: its prefetch slots
held by messages it will never acknowledge, its consumers cancelled, its broker
connection stuck. So every WORKER_PROBE_INTERVAL the worker's main process sends
a probe task to the worker's own queue (Celery's worker_direct queue, which only
this worker consumes); a pool child runs it and touches the worker's liveness
file. While its children are busy with tasks, the worker is working, and the main
process touches the file itself. `manage.py worker_status NODE` (compose's health
check) fails when the file is older than three intervals.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import bootsteps, shared_task
from celery.utils.nodenames import worker_direct
from celery.worker import state
from django.conf import settings

logger = logging.getLogger(__name__)
PROBE_TASK = "ops.liveness.probe"


def liveness_file(nodename: str) -> Path:
    """Where the worker `nodename` (e.g. default@host) proves it is taking work: a file on its own machine."""
    return Path(tempfile.gettempdir()) / f"celery-worker-{nodename.replace('/', '_')}.alive"


def max_age() -> float:
    """Seconds after which a worker whose file was not touched counts as taking nothing: three probe intervals."""
    return 3 * settings.WORKER_PROBE_INTERVAL.total_seconds()


def last_proof(nodename: str) -> float | None:
    """When (epoch seconds) the worker last proved it takes work, or None if it never did."""
    try:
        return liveness_file(nodename).stat().st_mtime
    except FileNotFoundError:
        return None


@shared_task(name=PROBE_TASK, ignore_result=True, log_outcome=False, soft_time_limit=10, time_limit=15)
def probe(nodename: str) -> None:
    """Touch the liveness file of the worker that ran this (sent by that worker to its own queue)."""
    liveness_file(nodename).touch()


class HideProbesReceived(logging.Filter):
    """Drop Celery's "Task ops.liveness.probe[…] received" line: a worker probes itself every few seconds."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.args, dict) and record.args.get("name") == PROBE_TASK)


class LivenessProbe(bootsteps.StartStopStep):
    """A consumer step that probes its own worker every WORKER_PROBE_INTERVAL (added in config/celery.py)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None
        self.sent_at = 0.0  # epoch seconds of the last probe sent

    def start(self, parent: Any) -> None:
        interval = settings.WORKER_PROBE_INTERVAL.total_seconds()
        self.timer_entry = parent.timer.call_repeatedly(interval, self.tick, (parent,), priority=10)
        self.tick(parent)

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop

    def tick(self, parent: Any) -> None:
        path = liveness_file(parent.hostname)
        if state.active_requests:  # children are running tasks: the worker is taking work
            path.touch()
            return
        answered = (last_proof(parent.hostname) or 0) >= self.sent_at
        if not answered and time.time() - self.sent_at < max_age():
            return  # one probe at a time: a worker that takes nothing must not pile them up
        sending = time.time()
        try:
            # No publish retries: this runs in the worker's event loop, which must not block.
            parent.app.send_task(
                PROBE_TASK,
                args=[parent.hostname],
                queue=worker_direct(parent.hostname),
                expires=max_age(),
                retry=False,
            )
        except Exception as exc:  # the broker is away; the file goes stale, which is the truth
            logger.warning("worker %s could not send its liveness probe: %r", parent.hostname, exc)
        else:
            self.sent_at = sending
