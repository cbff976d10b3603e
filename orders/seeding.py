"""Demo and bulk data: a catalogue, a demo customer, and realistic historical orders."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction

from core.dates import day_bounds
from orders.models import Order, OrderLine, Product

CATALOGUE = [
    ("MUG-001", "Enamel mug", "12.50"),
    ("TEE-001", "Organic T-shirt", "24.00"),
    ("CAP-001", "Canvas cap", "18.00"),
    ("BAG-001", "Tote bag", "15.00"),
    ("NBK-001", "Dot-grid notebook", "9.50"),
    ("PEN-001", "Brass pen", "32.00"),
    ("STK-001", "Sticker pack", "4.00"),
    ("BTL-001", "Steel bottle", "27.50"),
]
DEMO_STOCK = 500
# Orders and their lines are inserted this many at a time: large enough that a
# round trip carries many rows, small enough to keep memory flat at millions.
SEED_BATCH_SIZE = 5000


@dataclass(frozen=True)
class DemoCustomer:
    username: str
    password: str | None  # None when the user already existed


def seed_catalogue() -> list[Product]:
    """Create the demo products that are missing; existing ones (and their stock) are left alone."""
    for sku, name, price in CATALOGUE:
        Product.objects.get_or_create(sku=sku, defaults={"name": name, "price": Decimal(price), "stock": DEMO_STOCK})
    return list(Product.objects.filter(sku__in=[sku for sku, _, _ in CATALOGUE]))


def seed_demo_customer(username: str = "demo") -> DemoCustomer:
    """Create the demo customer with a random password, or leave an existing one untouched."""
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        return DemoCustomer(username, None)
    password = secrets.token_urlsafe(10)
    users.objects.create_user(username=username, email=f"{username}@example.com", password=password)
    return DemoCustomer(username, password)


def ensure_customers(count: int) -> list[int]:
    """Ids of `count` seed customers (customer0001…), creating the missing ones with unusable passwords."""
    users = get_user_model()
    names = [f"customer{index:04d}" for index in range(1, count + 1)]
    existing = set(users.objects.filter(username__in=names).values_list("username", flat=True))
    missing = []
    for name in names:
        if name not in existing:
            user = users(username=name, email=f"{name}@example.com")
            user.set_unusable_password()
            missing.append(user)
    users.objects.bulk_create(missing, batch_size=SEED_BATCH_SIZE)
    return list(users.objects.filter(username__in=names).values_list("pk", flat=True))


STATUS_MIX = [(Order.Status.COMPLETED, 0.86), (Order.Status.FAILED, 0.06), (Order.Status.CANCELLED, 0.08)]


def seed_orders(
    *,
    count: int,
    start: date,
    end: date,
    customers: int = 200,
    seed: int | None = None,
    progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Bulk-create `count` historical orders placed between start and end (inclusive, TIME_ZONE), 1–3 lines each."""
    rng = random.Random(seed)  # noqa: S311 - sample data
    products = seed_catalogue()
    customer_ids = ensure_customers(customers)
    first, after = day_bounds(start, end)
    span = (after - first).total_seconds()
    statuses = [status for status, _ in STATUS_MIX]
    weights = [weight for _, weight in STATUS_MIX]
    steps = {Order.Status.COMPLETED: Order.Step.NOTIFIED, Order.Status.FAILED: "", Order.Status.CANCELLED: ""}
    made = 0
    while made < count:
        batch = min(SEED_BATCH_SIZE, count - made)
        picked = [rng.sample(products, rng.randint(1, 3)) for _ in range(batch)]
        quantities = [[rng.randint(1, 4) for _ in chosen] for chosen in picked]
        orders = []
        for index, (chosen, amounts) in enumerate(zip(picked, quantities, strict=True), start=made):
            status = rng.choices(statuses, weights)[0]
            # In time order, as a real shop's orders are: ids grow with created_at.
            placed = first + timedelta(seconds=span * (index + rng.random()) / count)
            orders.append(
                Order(
                    customer_id=rng.choice(customer_ids),
                    status=status,
                    step=steps[status],
                    total=sum((p.price * q for p, q in zip(chosen, amounts, strict=True)), Decimal("0.00")),
                    created_at=placed,
                    updated_at=placed,
                    failure_reason="Payment declined: card declined by the issuer" if status == "failed" else "",
                )
            )
        with transaction.atomic():
            Order.objects.bulk_create(orders)
            OrderLine.objects.bulk_create(
                OrderLine(order_id=order.pk, product=product, quantity=quantity, unit_price=product.price)
                for order, chosen, amounts in zip(orders, picked, quantities, strict=True)
                for product, quantity in zip(chosen, amounts, strict=True)
            )
        made += batch
        progress(batch)
    return made
