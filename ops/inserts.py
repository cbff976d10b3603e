"""INSERT statements built from a model's fields, for the hot paths where the ORM takes extra round trips.

The ORM saves a new row with one INSERT, but a row with children is a
transaction of several, and "insert unless the key exists" is a savepoint
around the INSERT (SAVEPOINT, INSERT, RELEASE). On the paths that run for
every order these round trips are a measurable share of the work, so they are
written as single statements here. Columns and values come from the models'
fields (defaults, auto_now, adapters), so a new field needs no change; only
quoted names from the models are put into the SQL text, every value is a
parameter.
"""

from __future__ import annotations

import functools

from django.db import connection
from django.db.models import Field, Model


def single_statements() -> bool:
    """Whether the database runs the statements of the hot paths: data-modifying CTEs, INSERT ... SELECT ... FOR UPDATE.

    PostgreSQL does. SQLite, the embedded default for trying the project out,
    does not; there the callers take their ORM path, which does the same work
    in a transaction of several statements.
    """
    return connection.vendor == "postgresql"


def fields_of(model: type[Model], *, without: tuple[str, ...] = ()) -> list[Field]:
    """The model's concrete columns other than the primary key and the fields named in `without`."""
    skipped = {model._meta.get_field(name) for name in without}
    return [field for field in model._meta.concrete_fields if not field.primary_key and field not in skipped]


def values_of(instance: Model, fields: list[Field]) -> list[object]:
    """What saving a new `instance` would write to `fields`: pre_save (defaults, auto_now) and the DB adapters."""
    return [field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in fields]


def columns(fields: list[Field]) -> str:
    return ", ".join(connection.ops.quote_name(field.column) for field in fields)


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def mark_saved(instance: Model, pk: object) -> None:
    """Make an instance inserted outside the ORM look saved, as save() leaves it."""
    instance.pk = pk
    instance._state.adding, instance._state.db = False, connection.alias


def insert_unless_exists(instance: Model, unique_field: str, *, guard: tuple[str, list[object]] = ("", [])) -> bool:
    """INSERT the new `instance` unless a row with the same `unique_field` exists: one statement, no savepoint.

    True when it was inserted (its pk is then set). False when the value was
    taken, by an earlier row or by a concurrent transaction that committed first,
    or when `guard` selected nothing. `guard` is the SQL and parameters of a
    FROM ... WHERE clause (with FOR UPDATE to lock the rows it finds): the row is
    inserted only if that finds a row, so a condition on another table is checked
    and locked by the same statement.
    """
    fields = fields_of(type(instance))
    guard_sql, guard_params = guard
    with connection.cursor() as cursor:
        cursor.execute(
            _insert_sql(type(instance), unique_field, guard_sql), [*values_of(instance, fields), *guard_params]
        )
        row = cursor.fetchone()
    if row is None:
        return False
    mark_saved(instance, row[0])
    return True


@functools.cache
def _insert_sql(model: type[Model], unique_field: str, guard_sql: str) -> str:
    fields = fields_of(model)
    quote = connection.ops.quote_name
    # VALUES when there is no guard: SQLite reads "SELECT ... ON CONFLICT" as a join clause.
    source = f"SELECT {placeholders(len(fields))} {guard_sql}" if guard_sql else f"VALUES ({placeholders(len(fields))})"
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns(fields)}) {source} "
        f"ON CONFLICT ({quote(model._meta.get_field(unique_field).column)}) DO NOTHING "
        f"RETURNING {quote(model._meta.pk.column)}"
    )
