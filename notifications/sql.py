"""The statements of sending that the ORM cannot say as one, kept because a measurement showed they pay.

Literal SQL with the real table and column names; tests/notifications/test_sql.py
has PostgreSQL plan it against the real tables and checks the columns it writes.
A data-modifying CTE is one atomic statement: no BEGIN or COMMIT, one round
trip where the ORM takes four. On SQLite the caller takes its ORM path
(`in_one_statement()`); the bulk service tests run on both.
"""

from __future__ import annotations

from django.db import connection


def in_one_statement() -> bool:
    """Whether the database runs the statements below (PostgreSQL); otherwise the caller uses the ORM."""
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


# notifications.services.outbox.send_notification, when no rate limit applies:
# claim the row for this task if it is claimable (outbox.claimable()) and not
# past its expires_at, and return it for the message to be built from. The
# claim's commit need not wait for the disk (see send_notification); set_config
# with is_local true is SET LOCAL for the statement's own transaction, which a
# commit reads, so the session keeps its setting. One round trip where the ORM
# path takes four: the row's SELECT, SET synchronous_commit, the UPDATE, RESET.
# When it returns nothing, the caller takes the ORM path to find out why
# (missing, final, expired, or held by another task).
CLAIM_TO_SEND = """
UPDATE notifications_notification
SET status = 'sending', lease_owner = %(task_id)s, lease_expires_at = %(lease_expires_at)s,
    attempts = attempts + 1, task_id = %(task_id)s, updated_at = %(now)s
WHERE id = %(id)s
    AND (
        status = 'queued' AND (lease_owner = '' OR lease_expires_at < %(now)s OR lease_owner = %(task_id)s)
        OR status = 'sending' AND lease_expires_at < %(now)s
    )
    AND (expires_at IS NULL OR expires_at > %(now)s)
    AND set_config('synchronous_commit', 'off', true) IS NOT NULL
RETURNING *
"""
