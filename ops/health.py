"""Is each part alive? The database, the broker, the workers and beat, as read by /health/, /metrics and the admin."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from config import celery_app
from ops.models import BeatHeartbeat
from ops.queues import queue_depths

if TYPE_CHECKING:
    from ops.census import Census

# A short ping: a health check must answer quickly even when workers are gone.
PING_TIMEOUT = 0.5


def ping_timeout() -> float:
    """How long to wait for ping replies: PING_TIMEOUT, plus two polls on a broker that is polled.

    On the embedded file broker a worker reads the ping only at its next poll, and
    the reply is read at ours; Redis delivers both at once.
    """
    polling = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("polling_interval") or 0
    return PING_TIMEOUT + 2 * polling


@dataclass
class Part:
    ok: bool
    detail: str
    data: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"ok": self.ok, "detail": self.detail, **self.data}


def database() -> Part:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return Part(True, f"{connection.vendor} answers")
    except DatabaseError as exc:
        return Part(False, f"database unreachable: {exc}")


def broker() -> Part:
    try:
        depths = queue_depths()
    except Exception as exc:  # kombu raises many kinds of connection errors
        return Part(False, f"broker unreachable: {exc}")
    return Part(True, "broker answers", {"queues": depths})


def workers() -> Part:
    try:
        # A connection of its own for every ping: on a reused connection Kombu
        # remembers the reply queue as declared after the previous ping deleted
        # it, and the replies to the next ping are dropped.
        with celery_app.connection_for_write() as conn:
            replies = celery_app.control.ping(timeout=ping_timeout(), connection=conn)
    except Exception as exc:  # the broker is down, so no worker can be reached either
        return Part(False, f"cannot ping workers: {exc}", {"online": []})
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Part(False, f"no worker answered a ping within {ping_timeout():g}s", {"online": []})
    return Part(True, f"{len(names)} worker(s) online", {"online": names})


def latest_leader_heartbeat() -> BeatHeartbeat | None:
    return BeatHeartbeat.objects.filter(role=BeatHeartbeat.Role.LEADER).order_by("-seen_at").first()


def beat() -> Part:
    try:
        heartbeat = latest_leader_heartbeat()
    except DatabaseError as exc:
        return Part(False, f"cannot read beat's heartbeat: {exc}")
    if heartbeat is None:
        return Part(False, "beat has never run (no heartbeat)", {"age_seconds": None})
    age = (timezone.now() - heartbeat.seen_at).total_seconds()
    limit = settings.BEAT_HEARTBEAT_MAX_AGE.total_seconds()
    data = {"age_seconds": round(age, 1), "leader": heartbeat.node}
    if age > limit:
        return Part(False, f"beat's last heartbeat is {age:.0f}s old (limit {limit:.0f}s)", data)
    return Part(True, f"beat leader {heartbeat.node} ticked {age:.0f}s ago", data)


def broken_schedules() -> Part:
    """The schedules beat's leader skipped as broken at its last read (a bad row never stops beat; it is listed)."""
    try:
        heartbeat = latest_leader_heartbeat()
    except DatabaseError as exc:
        return Part(False, f"cannot read beat's heartbeat: {exc}")
    skipped = heartbeat.skipped_schedules if heartbeat is not None else {}
    if skipped:
        names = ", ".join(sorted(skipped))
        return Part(False, f"beat skips {len(skipped)} broken schedule(s): {names}", {"broken": skipped})
    return Part(True, "beat runs every enabled schedule" if heartbeat else "beat has not read the schedules yet")


def readiness(census: Census | None = None) -> dict[str, Part]:
    """Each part's health; the workers' from the recent census, so no call waits for a ping (ops/census.py)."""
    from ops import census as workers_census  # it builds on Part and PING_TIMEOUT from here

    return {
        "database": database(),
        "broker": broker(),
        "workers": workers_census.workers_part(census),
        "beat": beat(),
        # "schedules" (late ones, a warning) is ops.lateness's; a row beat cannot run fails readiness.
        "broken_schedules": broken_schedules(),
    }


def failures_since(hours: int = 24) -> list[tuple[str, int]]:
    """Failed task results in the last `hours`, per task name, most first."""
    from django.db.models import Count
    from django_celery_results.models import TaskResult

    since = timezone.now() - timedelta(hours=hours)
    rows = (
        TaskResult.objects.filter(status="FAILURE", date_done__gte=since)
        .values("task_name")
        .annotate(count=Count("pk"))
        .order_by("-count", "task_name")
    )
    return [(row["task_name"] or "(unknown)", row["count"]) for row in rows]
