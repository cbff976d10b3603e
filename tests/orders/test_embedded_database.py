"""The embedded default database (SQLite) runs the order paths too: the PostgreSQL-only statements have ORM twins."""

from __future__ import annotations

import json
from pathlib import Path

from tests.foundation.test_settings import clean_env, manage

SCRIPT = """
import json
from django.contrib.auth.models import User
from core.base_task import Attempt
from core.errors import FieldErrors
from orders.services import pipeline, placing
from orders.models import Order, Payment, Product

customer = User.objects.create(username="c", email="c@example.com")
Product.objects.create(sku="MUG", name="Mug", price="1.50", stock=5)
placed = placing.place_order(customer_id=customer.pk, lines=[placing.LineRequest("MUG", 2)])
outcome = pipeline.process_order(placed.order.pk, attempt=Attempt("task-1"))
try:
    placing.place_order(customer_id=customer.pk, lines=[placing.LineRequest("MUG", 9)])
    rejected = None
except FieldErrors as exc:
    rejected = exc.errors
order = Order.objects.get()
print(json.dumps({
    "total": str(placed.order.total), "outcome": outcome, "status": order.status, "step": order.step,
    "events": list(order.events.values_list("message", flat=True)), "payment": Payment.objects.get().status,
    "stock": Product.objects.get().stock, "rejected": rejected,
}))
"""


def test_an_order_is_placed_processed_and_refused_on_the_embedded_sqlite_database(tmp_path: Path) -> None:
    env = clean_env(tmp_path, DEBUG="1")
    migrated = manage(env, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr

    result = manage(env, "shell", "--no-imports", "--command", SCRIPT)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        "total": "3.00",
        "outcome": "completed",
        "status": "completed",
        "step": "notified",
        "events": ["attempt 1"],
        "payment": "succeeded",
        "stock": 3,
        "rejected": {"lines.0.quantity": ["Only 3 of MUG in stock."]},
    }
