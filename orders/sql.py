"""The statements of the order path that the ORM cannot say as one, kept because a measurement showed they pay.

Each is literal SQL with the real table and column names: read it, or paste it
into psql with the parameters filled in. tests/orders/test_sql.py runs EXPLAIN
on each, checks that the columns it writes are exactly the model's, and checks
that it leaves the same rows as the ORM path beside it.

They are PostgreSQL's: a data-modifying CTE is one atomic statement, so it needs
no BEGIN or COMMIT, and it is one round trip where the ORM takes four or more. On SQLite,
the embedded default for trying the project out, the callers take their ORM path
instead (`in_one_statement()`); the pipeline's service tests run on both.
"""

from __future__ import annotations

from django.db import connection


def in_one_statement() -> bool:
    """Whether the database runs the statements below (PostgreSQL); otherwise the callers use the ORM."""
    return connection.vendor == "postgresql"


# POST /api/orders/ (orders.services.placing): check every requested line
# against the catalogue (a known SKU with enough stock), price it, and insert
# the order and its lines only when every line matched: one round trip instead
# of a product SELECT, BEGIN, two INSERTs and COMMIT. The stock is read, not
# reserved; the pipeline reserves it. Measured: POST p50 2.73x -> 1.97x the
# trivial view's (README "Performance").
INSERT_ORDER = """
WITH wanted AS (
    SELECT line.position, line.sku, line.quantity
    FROM unnest(%(skus)s::varchar[], %(quantities)s::integer[]) WITH ORDINALITY AS line (sku, quantity, position)
),
priced AS (
    SELECT wanted.position, product.id AS product_id, wanted.quantity, product.price
    FROM wanted
    JOIN orders_product AS product ON product.sku = wanted.sku AND product.stock >= wanted.quantity
),
new_order AS (
    INSERT INTO orders_order (
        customer_id, status, step, total, failure_reason, created_at, updated_at, lease_owner, lease_expires_at,
        attempts, requeued_at, replays, tracking_number, idempotency_key, request_fingerprint
    )
    SELECT
        %(customer_id)s, 'pending', '', (SELECT sum(price * quantity) FROM priced), '', %(now)s, %(now)s, '', NULL,
        0, NULL, 0, '', %(idempotency_key)s, %(request_fingerprint)s
    WHERE (SELECT count(*) FROM priced) = %(line_count)s
    RETURNING id
)
INSERT INTO orders_orderline (order_id, product_id, quantity, unit_price)
SELECT new_order.id, priced.product_id, priced.quantity, priced.price
FROM new_order, priced
ORDER BY priced.position
RETURNING id, order_id, product_id, quantity, unit_price
"""

# Every order's first statement (orders.services.lease.claim): take the
# lease of an order that is pending, or processing with our own or an expired
# lease; record the attempt in its history; and return the order with the
# customer fields its emails use, one row per line with the line and its
# product's SKU and name (the steps and the emails need no more of it; the stock
# is read where it is locked). The ORM needs an UPDATE, a SELECT, an INSERT, a
# COMMIT and a SELECT of the lines for the same.
CLAIM_ORDER = """
WITH claimed AS (
    UPDATE orders_order
    SET status = 'processing', lease_owner = %(task_id)s, lease_expires_at = %(lease_expires_at)s,
        attempts = attempts + 1, updated_at = %(now)s
    WHERE id = %(order_id)s
        AND (status = 'pending' OR (status = 'processing' AND (lease_owner = %(task_id)s OR lease_expires_at < %(now)s)))
    RETURNING *
),
attempt AS (
    INSERT INTO orders_orderevent (order_id, kind, task_id, message, actor_id, created_at)
    SELECT id, 'attempt', %(task_id)s, 'attempt ' || attempts, NULL, %(now)s
    FROM claimed
)
SELECT
    claimed.*,
    customer.username AS customer__username,
    customer.first_name AS customer__first_name,
    customer.email AS customer__email,
    line.id AS line__id,
    line.product_id AS line__product_id,
    line.quantity AS line__quantity,
    line.unit_price AS line__unit_price,
    product.sku AS product__sku,
    product.name AS product__name
FROM claimed
JOIN auth_user AS customer ON customer.id = claimed.customer_id
LEFT JOIN orders_orderline AS line ON line.order_id = claimed.id
LEFT JOIN orders_product AS product ON product.id = line.product_id
ORDER BY line.product_id
"""

# The pipeline's first step (orders.services.pipeline.reserve_stock): while the
# order is ours and not yet reserved, take every line's quantity from its
# product's stock and record the checkpoint, all or nothing: one round trip
# instead of BEGIN, the checkpoint's UPDATE, one UPDATE per product and COMMIT.
# Locks are taken as the ORM path takes them, the order row first (as a cancel
# does), then the products in id order, so it cannot deadlock with either. When
# a product has too little, nothing is written and the first such product is
# returned; when the order is not ours at that step, nothing is written either
# (`reserved` is false and the caller reads the order to find out why).
# Measured (README "Performance"): 4-6% less CPU per order and its email in a
# solo worker; the quick bench's efficiency cannot tell that from its noise.
RESERVE_STOCK = """
WITH mine AS MATERIALIZED (
    SELECT id
    FROM orders_order
    WHERE id = %(order_id)s AND status = 'processing' AND lease_owner = %(task_id)s AND step = %(previous)s
    FOR UPDATE
),
wanted AS (
    SELECT line.product_id, sum(line.quantity) AS quantity
    FROM unnest(%(product_ids)s::bigint[], %(quantities)s::integer[]) AS line (product_id, quantity)
    GROUP BY line.product_id
),
locked AS MATERIALIZED (
    SELECT product.id, product.sku, product.stock
    FROM orders_product AS product
    WHERE product.id IN (SELECT product_id FROM wanted) AND EXISTS (SELECT FROM mine)
    ORDER BY product.id
    FOR UPDATE
),
short AS (
    SELECT locked.sku, wanted.quantity
    FROM locked
    JOIN wanted ON wanted.product_id = locked.id
    WHERE locked.stock < wanted.quantity
    ORDER BY locked.id
    LIMIT 1
),
reserved AS (
    UPDATE orders_order
    SET step = %(step)s, updated_at = %(now)s,
        lease_expires_at = COALESCE(%(lease_expires_at)s::timestamptz, lease_expires_at)
    WHERE id IN (SELECT id FROM mine) AND NOT EXISTS (SELECT FROM short)
    RETURNING id
),
taken AS (
    UPDATE orders_product AS product
    SET stock = product.stock - wanted.quantity
    FROM wanted
    WHERE product.id = wanted.product_id AND EXISTS (SELECT FROM reserved)
)
SELECT
    EXISTS (SELECT FROM reserved) AS reserved,
    (SELECT sku FROM short) AS short_sku,
    (SELECT quantity FROM short) AS short_quantity
"""

# The charge step's outcome (orders.services.payments.record_charge): record the
# gateway's success on the payment intent, and checkpoint 'charged' while the
# order is ours and reserved. One round trip instead of two UPDATEs. The
# payment's write stands even when the checkpoint's matches nothing (the lease
# went to another task, which then finds the charge succeeded and does not call
# the gateway again), as it did when the two were separate commits; `charged` is
# false then, and the caller reads the order to find out why.
RECORD_CHARGE = """
WITH paid AS (
    UPDATE orders_payment
    SET status = 'succeeded', error = '', provider_reference = %(reference)s, task_id = %(task_id)s,
        attempts = attempts + 1, updated_at = %(now)s
    WHERE id = %(payment_id)s
    RETURNING attempts
),
charged AS (
    UPDATE orders_order
    SET step = %(step)s, updated_at = %(now)s,
        lease_expires_at = COALESCE(%(lease_expires_at)s::timestamptz, lease_expires_at)
    WHERE id = %(order_id)s AND status = 'processing' AND lease_owner = %(task_id)s AND step = %(previous)s
    RETURNING id
)
SELECT EXISTS (SELECT FROM charged) AS charged, (SELECT attempts FROM paid) AS attempts
"""

# The charge step's intent (orders.services.payments.open_charge): while the
# order is ours, lock it (a cancel takes the same lock, so the two cannot
# cross), renew its lease when due, and insert the payment intent unless an
# earlier attempt left one under the same key. This commit waits for the disk
# whatever the session says: it must be durable before the gateway is called
# (set_config with is_local true is SET LOCAL for the statement's own
# transaction, which its commit reads). One round trip instead of BEGIN, SET
# LOCAL, the lock or the renewal, the INSERT and COMMIT. `leased` is false when
# the order is no longer ours; no row comes back from `opened` when the intent
# exists, and the caller reads it.
OPEN_CHARGE = """
WITH mine AS MATERIALIZED (
    SELECT id
    FROM orders_order
    WHERE id = %(order_id)s AND status = 'processing' AND lease_owner = %(task_id)s
    FOR UPDATE
),
renewed AS (
    UPDATE orders_order
    SET lease_expires_at = %(lease_expires_at)s::timestamptz
    WHERE id IN (SELECT id FROM mine) AND %(lease_expires_at)s::timestamptz IS NOT NULL
),
opened AS (
    INSERT INTO orders_payment (
        order_id, kind, amount, idempotency_key, status, provider_reference, error, attempts, task_id,
        created_at, updated_at
    )
    SELECT id, 'charge', %(amount)s, %(idempotency_key)s, 'pending', '', '', 0, %(task_id)s, %(now)s, %(now)s
    FROM mine
    WHERE set_config('synchronous_commit', 'on', true) IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *
)
SELECT EXISTS (SELECT FROM mine) AS leased, opened.*
FROM (SELECT) AS one
LEFT JOIN opened ON true
"""
