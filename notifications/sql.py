"""The statement of bulk sending that the ORM cannot say as one, kept because a measurement showed it pays.

Literal SQL with the real table and column names; tests/notifications/test_sql.py
has PostgreSQL plan it against the real tables and checks the columns it writes.
A data-modifying CTE is one atomic statement: no BEGIN or COMMIT, one round
trip where the ORM takes four. On SQLite the caller takes its ORM path
(`in_one_statement()`); the bulk service tests run on both.
"""

from __future__ import annotations

from django.db import connection


def in_one_statement() -> bool:
    """Whether the database runs the statement below (PostgreSQL); otherwise the caller uses the ORM."""
    return connection.vendor == "postgresql"


# notifications.services.bulk: record a chunk's emails as sent or failed, a few at
# a time as the server takes them, where this task still holds them, and move
# their campaign's counts by the same rows. Bulk kinds never carry a
# credential, so the body stays (outbox.final() would keep it too). Measured on a
# loaded 2-core machine against locmem mail: a transaction of two UPDATEs cost
# 9-15 ms per email; one statement per email about a tenth of that, and about 0.7
# ms of a chunk's 2.7 ms per email in the bench; one per RECORD_EVERY emails
# (see the commit message).
RECORD_BULK_EMAILS = """
WITH outcome AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(statuses)s::varchar[], %(sent_at)s::timestamptz[], %(errors)s::text[])
        AS outcome (id, status, sent_at, error)
),
recorded AS (
    UPDATE notifications_notification AS notification
    SET status = outcome.status, sent_at = outcome.sent_at, last_error = outcome.error,
        lease_owner = '', lease_expires_at = NULL, updated_at = %(now)s
    FROM outcome
    WHERE notification.id = outcome.id AND notification.lease_owner = %(task_id)s
        AND notification.status = 'sending'
    RETURNING notification.campaign_id, notification.status
),
counted AS (
    SELECT campaign_id, count(*) FILTER (WHERE status = 'sent') AS sent,
        count(*) FILTER (WHERE status = 'failed') AS failed
    FROM recorded
    WHERE campaign_id IS NOT NULL
    GROUP BY campaign_id
)
UPDATE notifications_campaign AS campaign
SET sent = campaign.sent + counted.sent, failed = campaign.failed + counted.failed
FROM counted
WHERE campaign.id = counted.campaign_id
"""
