"""Per-task figures for the admin overview, asked of the workers themselves: the numbers Prometheus scrapes.

A shop without Prometheus still sees throughput, failures by type and durations
per task. Each worker answers the `task_metrics` broadcast (ops/worker_metrics.py)
with its counters since it started; they are added up here.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from config import celery_app
from ops.health import PING_TIMEOUT


@dataclass
class TaskStats:
    name: str
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    # cumulative histogram: upper bound -> runs that took at most that long
    buckets: Counter[float] = field(default_factory=Counter)
    seconds: float = 0.0
    running: int = 0

    @property
    def finished(self) -> int:
        return int(sum(self.outcomes.values()))

    @property
    def timed(self) -> int:
        return int(self.buckets.get(math.inf, 0))

    @property
    def mean_seconds(self) -> float | None:
        return self.seconds / self.timed if self.timed else None

    def quantile_bound(self, share: float) -> float | None:
        """The smallest bucket bound within which `share` of the runs finished (None: no runs, inf: beyond the last)."""
        if not self.timed:
            return None
        wanted = share * self.timed
        return next(bound for bound in sorted(self.buckets) if self.buckets[bound] >= wanted)

    def p95_text(self) -> str:
        bound = self.quantile_bound(0.95)
        if bound is None:
            return "—"
        if math.isinf(bound):
            finite = [b for b in self.buckets if not math.isinf(b)]
            return f"over {max(finite):g} s" if finite else "—"
        return f"≤ {bound:g} s"

    def failures_text(self) -> str:
        return ", ".join(f"{name} ×{int(count)}" for name, count in self.failures.most_common())


def from_workers(timeout: float = PING_TIMEOUT) -> tuple[list[TaskStats], list[str]]:
    """(every task's figures summed over the workers that answered, busiest first; the workers that answered)."""
    try:
        with celery_app.connection_for_write() as conn:
            replies = celery_app.control.broadcast("task_metrics", reply=True, timeout=timeout, connection=conn)
    except Exception:  # the broker is down; the overview says so in its health table
        return [], []
    stats: dict[str, TaskStats] = {}
    workers = []
    for reply in replies or []:
        for worker, answer in reply.items():
            workers.append(worker)
            for name, figures in (answer or {}).get("tasks", {}).items():
                entry = stats.setdefault(name, TaskStats(name))
                entry.outcomes.update(figures.get("outcomes", {}))
                entry.failures.update(figures.get("failures", {}))
                entry.buckets.update({float(bound): count for bound, count in figures.get("buckets", [])})
                entry.seconds += figures.get("sum", 0.0)
                entry.running += figures.get("running", 0)
    ordered = sorted(stats.values(), key=lambda entry: (-entry.finished, entry.name))
    return ordered, sorted(workers)
