"""Every change to a schedule, recorded with who made it and the old and new value of each field.

A schedule decides which task runs when, so an edit is as consequential as running
a task by hand. The admin and manage.py setup_schedules call record() around each
save and delete; ScheduleChange rows are read-only in the admin.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from ops.models import ScheduleChange

# Written by beat on every run, not by people: not part of what a change is.
BOOKKEEPING = {"last_run_at", "total_run_count", "date_changed", "no_changes"}
KINDS = {
    "periodictask": "periodic task",
    "intervalschedule": "interval",
    "crontabschedule": "crontab",
    "solarschedule": "solar",
    "clockedschedule": "clocked",
}


def snapshot(instance: Model | None) -> dict[str, str] | None:
    """The row's fields as text (foreign keys as ids), for comparing before and after a save."""
    if instance is None:
        return None
    return {
        field.name: None if (value := getattr(instance, field.attname)) is None else str(value)
        for field in instance._meta.concrete_fields
        if field.name not in BOOKKEEPING and not field.primary_key
    }


def record(
    instance: Model, before: dict[str, str] | None, after: dict[str, str] | None, *, actor: Any, via: str
) -> ScheduleChange | None:
    """Store what changed between two snapshots (None before: added; None after: deleted); nothing when nothing did."""
    old, new = before or {}, after or {}
    changes = {
        name: [old.get(name), new.get(name)]
        for name in sorted(set(old) | set(new))
        if before is None or after is None or old.get(name) != new.get(name)
    }
    if before is not None and after is not None and not changes:
        return None
    if before is None:
        action = ScheduleChange.Action.ADDED
    elif after is None:
        action = ScheduleChange.Action.DELETED
    else:
        action = ScheduleChange.Action.CHANGED
    return ScheduleChange.objects.create(
        changed_by=actor if getattr(actor, "is_authenticated", False) else None,
        via=via,
        action=action,
        kind=KINDS.get(instance._meta.model_name, instance._meta.verbose_name),
        object_id=str(instance.pk),
        object_name=str(getattr(instance, "name", "") or instance)[:255],
        changes=changes,
    )
