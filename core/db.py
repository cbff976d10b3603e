"""Small database helpers for the few statements that the ORM cannot say as one."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import connection
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
    """A saved instance of `model` from a row keyed by column name; fields the row lacks are deferred."""
    present = [field for field in model._meta.concrete_fields if field.column in row]
    return model.from_db(connection.alias, [field.attname for field in present], [row[f.column] for f in present])
