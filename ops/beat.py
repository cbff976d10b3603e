"""Beat safety: one leader among beat processes, and a heartbeat in the database.

On beat start (the beat_init signal) the scheduler's tick is wrapped, whatever
scheduler was chosen (`-S django` or the setting). Before every tick the process
makes sure it holds a PostgreSQL advisory lock; only the holder sends tasks. A
second beat started by mistake waits as a standby and takes over when the
leader's session ends (the process died, or its connection was lost).

The lock lives on a connection of its own, not Django's: DatabaseScheduler calls
close_old_connections() on every tick, which would silently drop a lock held on
Django's connection. With SQLite (the embedded default) there is one machine and
one beat by definition, so there is no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from datetime import timedelta
from typing import Any

import psycopg
from celery import signals
from django.db import DatabaseError, connections
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from ops import schedule_checks
from ops.models import BeatHeartbeat

logger = logging.getLogger(__name__)

# A fixed 64-bit key for pg_advisory_lock, derived from a readable name.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"backoffice:celery-beat-leader").digest()[:8], "big", signed=True)
# How often a standby asks for the lock (seconds); also the takeover delay after the leader dies.
STANDBY_POLL_SECONDS = 1.0


# Schedules this beat process skipped at its last read of the schedule table: name → why.
SKIPPED: dict[str, str] = {}


class CheckedModelEntry(ModelEntry):
    """django-celery-beat's entry, built only from a row that passes ops.schedule_checks.

    DatabaseScheduler skips a row whose entry raises ValueError, but a bad row
    raised TypeError or ParseException instead and beat exited. Here every bad
    row is logged by name (once per reason), skipped with ValueError, and listed
    in this beat's heartbeat, so /health/ and the admin show it.
    """

    def __init__(self, model: PeriodicTask, app: Any = None) -> None:
        found = schedule_checks.problems(model)
        if found:
            reason = schedule_checks.describe(found)
            if SKIPPED.get(model.name) != reason:
                logger.error("beat skips schedule %r: %s", model.name, reason)
            SKIPPED[model.name] = reason
            raise ValueError(reason)
        SKIPPED.pop(model.name, None)
        super().__init__(model, app=app)


# `celery beat -S django` names DatabaseScheduler itself, so its entry class is set
# here rather than in a subclass: every beat of this project gets the checked entries.
DatabaseScheduler.Entry = CheckedModelEntry


class BeatLeadership:
    """Holds (or waits for) the advisory lock on a dedicated connection, and records heartbeats."""

    def __init__(self) -> None:
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = timezone.now()
        self.connection: psycopg.Connection | None = None
        self.is_leader = False
        self.announced: str | None = None
        self.uses_lock = connections["default"].vendor == "postgresql"

    def _connect(self) -> psycopg.Connection:
        params = connections["default"].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("server_side_binding", None)
        params["application_name"] = f"celery beat leader lock ({self.node})"
        return psycopg.connect(**params, autocommit=True)

    def check(self) -> bool:
        """True if this process leads now: re-checked on every tick, acquired when free."""
        if not self.uses_lock:
            self.is_leader = True
            return True
        try:
            if self.connection is None or self.connection.closed:
                self.connection = self._connect()
            if self.is_leader:
                # A bigint advisory key shows in pg_locks as its high and low 32 bits.
                unsigned = LOCK_KEY & 0xFFFFFFFFFFFFFFFF
                held = self.connection.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    " AND granted AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                    [unsigned >> 32, unsigned & 0xFFFFFFFF],
                ).fetchone()[0]
                if not held:
                    raise psycopg.OperationalError("the advisory lock is no longer held")
                return True
            self.is_leader = bool(self.connection.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0])
        except psycopg.Error as exc:
            if self.is_leader:
                logger.error("beat %s lost leadership: %s", self.node, exc)
            self.is_leader = False
            self._drop_connection()
        return self.is_leader

    def _drop_connection(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(psycopg.Error):
                self.connection.close()
            self.connection = None

    def heartbeat(self) -> None:
        role = BeatHeartbeat.Role.LEADER if self.is_leader else BeatHeartbeat.Role.STANDBY
        try:
            BeatHeartbeat.objects.update_or_create(
                node=self.node,
                defaults={
                    "role": role,
                    "seen_at": timezone.now(),
                    "started_at": self.started_at,
                    "skipped_schedules": dict(SKIPPED),
                },
            )
        except DatabaseError as exc:  # the database being down must not kill beat; the heartbeat just ages
            logger.warning("beat %s could not record its heartbeat: %s", self.node, exc)

    def forget_old_beats(self) -> None:
        """Drop heartbeat rows of beat processes that are long gone (housekeeping: never fatal)."""
        try:
            BeatHeartbeat.objects.filter(seen_at__lt=timezone.now() - timedelta(hours=1)).delete()
        except DatabaseError as exc:
            # A leader that takes over after PostgreSQL restarted can find Django's
            # connection dead here; like a heartbeat, this must not kill beat.
            logger.warning("beat %s could not forget old beats: %s", self.node, exc)


def guard(scheduler: Any, leadership: BeatLeadership) -> None:
    """Wrap the scheduler's tick so that only the leader sends, and a new leader starts from the database."""
    original_tick = scheduler.tick
    original_read = getattr(scheduler, "all_as_schedule", None)
    if original_read is not None:

        def all_as_schedule() -> dict:
            SKIPPED.clear()  # a full read: what is still broken is listed again, what was fixed is gone
            return original_read()

        scheduler.all_as_schedule = all_as_schedule

    def tick(*args: Any, **kwargs: Any) -> float:
        was_leader = leadership.is_leader
        leads = leadership.check()
        leadership.heartbeat()
        if not leads:
            if was_leader or leadership.announced is None:
                logger.info("beat %s is standby: another beat holds the leader lock", leadership.node)
                leadership.announced = "standby"
            return STANDBY_POLL_SECONDS
        if not was_leader:
            logger.info("beat %s is the leader now", leadership.node)
            leadership.announced = "leader"
            leadership.forget_old_beats()
            # Entries in memory may be older than what the last leader ran: read
            # them again (last_run_at included) and rebuild the heap before sending.
            if hasattr(scheduler, "_initial_read"):
                scheduler._initial_read = True
            scheduler._heap = None
        return original_tick(*args, **kwargs)

    scheduler.tick = tick


@signals.beat_init.connect(dispatch_uid="ops.beat.elect_leader")
def elect_leader(sender: Any = None, **_: Any) -> None:
    leadership = BeatLeadership()
    sender._leadership = leadership
    guard(sender.scheduler, leadership)
    logger.info(
        "beat %s started; %s",
        leadership.node,
        "it sends only while it holds the leader lock" if leadership.uses_lock else "SQLite: a single beat, no lock",
    )


@signals.beat_embedded_init.connect(dispatch_uid="ops.beat.elect_leader_embedded")
def elect_leader_embedded(sender: Any = None, **_: Any) -> None:
    elect_leader(sender=sender)
