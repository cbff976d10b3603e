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


# notifications.services.bulk: record one email of a chunk as sent or failed,
# while this task holds it, and move its campaign's count by the same row, as
# soon as the server took it. Bulk kinds never carry a credential, so the
# body stays (outbox.final() would keep it too). Measured on a loaded 2-core
# machine against locmem mail: a transaction of two UPDATEs cost 9-15 ms per
# email; this, about a tenth of that (see the commit message).
RECORD_BULK_EMAIL = """
WITH recorded AS (
    UPDATE notifications_notification
    SET status = %(status)s, sent_at = %(sent_at)s, last_error = %(error)s,
        lease_owner = '', lease_expires_at = NULL, updated_at = %(now)s
    WHERE id = %(notification_id)s AND lease_owner = %(task_id)s AND status = 'sending'
    RETURNING campaign_id
)
UPDATE notifications_campaign AS campaign
SET sent = campaign.sent + %(sent)s, failed = campaign.failed + %(failed)s
FROM recorded
WHERE campaign.id = recorded.campaign_id
"""
