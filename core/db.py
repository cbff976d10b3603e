"""Small database helpers: the few statements that the ORM cannot say as one, and when a commit waits for the disk."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import DatabaseError, connection
from django.db.models import Model
from django.db.models.constants import OnConflict

M = TypeVar("M", bound=Model)


def insert_unless_exists(instance: Model) -> bool:
    """Save the new `instance` unless it collides with a row on a unique constraint: one INSERT, no savepoint.

    True when it was inserted (its pk is set, as save() sets it); False when a
    unique value was taken already, by an earlier row or by a concurrent
    transaction that committed first. get_or_create costs a SELECT first and a
    savepoint around the INSERT inside a transaction; this is INSERT ... ON
    CONFLICT DO NOTHING RETURNING (INSERT OR IGNORE on SQLite). It goes through
    the same insert that Model.save() uses (QuerySet._insert), so defaults,
    auto_now, db_default and generated fields are handled exactly as save()
    handles them.
    """
    meta = instance._meta
    fields = [field for field in meta.local_concrete_fields if not field.generated and field is not meta.auto_field]
    returning = meta.db_returning_fields
    rows = type(instance)._base_manager._insert(
        [instance], fields=fields, returning_fields=returning, on_conflict=OnConflict.IGNORE
    )
    if not rows or rows[0] is None:
        return False
    for value, field in zip(rows[0], returning, strict=True):
        setattr(instance, field.attname, value)
    instance._state.adding, instance._state.db = False, connection.alias
    return True


def fetch_rows(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one statement and return its rows as dicts by column name."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def instance_from_row(model: type[M], row: dict[str, Any]) -> M:
    """A saved instance of `model` from a row keyed by column name; fields the row lacks are deferred.

    Values pass through their field's from_db_value, as a queryset's do (a JSONField's text is parsed).
    """
    present = [field for field in model._meta.concrete_fields if field.column in row]
    values = [
        field.from_db_value(row[field.column], None, connection)
        if hasattr(field, "from_db_value")
        else row[field.column]
        for field in present
    ]
    return model.from_db(connection.alias, [field.attname for field in present], values)


@contextmanager
def commits_not_waiting_for_disk() -> Iterator[None]:
    """Inside, a commit returns once PostgreSQL has the change, before its log is on disk (synchronous_commit off).

    On a durable PostgreSQL every commit waits for the disk, and a checkpoint that
    nothing outside the database has seen yet need not: for a run of such
    checkpoints only the last commit before the outside world hears of them must
    wait. PostgreSQL writes its log in order, so a commit that waits makes every
    commit before it durable as well. What this gives up is narrow: a crash of
    PostgreSQL itself (not a restart, which writes the log out first, and not a
    crash of a worker: the commit is in PostgreSQL either way) within about three
    `wal_writer_delay`s (0.6 s by default) of such commits loses them, and the
    database comes back as it was at the last commit that waited: consistent, a
    few steps back, which a retry or a sweep redoes. Callers wrap only steps that
    are safe to redo and keep a commit that waits before anything that is not
    (wait_for_disk_on_commit). A no-op on other databases.

    Session-wide until the block ends, so it costs two statements for any number
    of commits; the setting is reset on the way out, or the connection closed
    when it cannot be, so it never outlives the block.
    """
    if connection.vendor != "postgresql":
        yield
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")
        yield
    finally:
        _reset_synchronous_commit()


def _reset_synchronous_commit() -> None:
    if connection.connection is None or connection.needs_rollback:
        return  # closed, or the SET goes with the transaction being rolled back around it
    try:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")
    except BaseException as exc:
        # A lost connection, or a soft time limit landing in the RESET: the session
        # goes, so the next use opens a new one with the server's setting.
        connection.close()
        if not isinstance(exc, DatabaseError):
            raise


def wait_for_disk_on_commit() -> None:
    """Make the current transaction's commit wait for the disk, even inside commits_not_waiting_for_disk().

    For the commit before a call to the outside that must not be forgotten (a
    payment intent before the gateway): it makes every earlier commit durable too.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("wait_for_disk_on_commit() belongs inside transaction.atomic(): it sets the commit of one")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO on")
