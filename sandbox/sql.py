"""The sandbox gateway's charge in one statement, so the simulated provider costs one round trip per call.

A real gateway's charge is one request to the provider and no load on our
database. The sandbox keeps its books in our PostgreSQL, and through the ORM a
charge took three statements (look the key up, take a scripted fault, record
the entry): with the carrier's fault lookup, four of an order's round trips,
about a seventh of a worker child's time in the bench's pipeline (py-spy). As
one statement the charge costs what a call to a real provider costs the
pipeline: one wait. tests/sandbox/test_sql.py checks it against the ORM path.

PostgreSQL's: on SQLite the gateway takes its ORM path (`in_one_statement()`).
"""

from __future__ import annotations

from django.db import connection


def in_one_statement() -> bool:
    """Whether the database runs CHARGE (PostgreSQL); otherwise the gateway uses the ORM."""
    return connection.vendor == "postgresql"


# sandbox.providers.SandboxGateway.charge: answer a key seen before with its
# entry, taking no fault; otherwise take the reference's first scripted charge
# fault (as SandboxFault.objects...first() does, by id) and record the charge
# unless that fault, or else the random one drawn by the caller, fails the call.
# A crash_after fault records the charge (the caller then kills its process).
# A concurrent request with the same key that recorded first leaves
# `recorded_id` empty: the caller reads its entry.
CHARGE = """
WITH earlier AS (
    SELECT id, kind, amount
    FROM sandbox_sandboxledgerentry
    WHERE idempotency_key = %(idempotency_key)s
),
taken AS (
    UPDATE sandbox_sandboxfault
    SET remaining = remaining - 1
    WHERE id = (
        SELECT id
        FROM sandbox_sandboxfault
        WHERE reference = %(reference)s AND operation = 'charge' AND remaining > 0
        ORDER BY id
        LIMIT 1
    )
        AND remaining > 0
        AND NOT EXISTS (SELECT FROM earlier)
    RETURNING fault
),
recorded AS (
    INSERT INTO sandbox_sandboxledgerentry (kind, idempotency_key, reference, amount, charge_id, created_at)
    SELECT 'charge', %(idempotency_key)s, %(reference)s, %(amount)s, NULL, %(now)s
    WHERE NOT EXISTS (SELECT FROM earlier)
        AND coalesce((SELECT fault FROM taken), %(random_fault)s, 'none') IN ('none', 'crash_after')
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
)
SELECT
    (SELECT id FROM earlier) AS earlier_id,
    (SELECT kind FROM earlier) AS earlier_kind,
    (SELECT amount FROM earlier) AS earlier_amount,
    (SELECT fault FROM taken) AS fault,
    (SELECT id FROM recorded) AS recorded_id
"""
