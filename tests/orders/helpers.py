"""Helpers for order tests."""

from __future__ import annotations

from decimal import Decimal

from orders.models import Order, Product
from orders.services import placing
from sandbox.models import SandboxFault, SandboxLedgerEntry
from tests.factories import ProductFactory


def place(customer, *items: tuple[Product, int], key: str | None = None) -> Order:
    lines = [placing.LineRequest(sku=product.sku, quantity=quantity) for product, quantity in items]
    return placing.place_order(customer_id=customer.pk, lines=lines, idempotency_key=key).order


def product(stock: int = 10, price: str = "10.00") -> Product:
    return ProductFactory(stock=stock, price=Decimal(price))


def fault(order: Order, operation: str, kind: str, times: int = 1) -> None:
    SandboxFault.objects.create(reference=f"order:{order.pk}", operation=operation, fault=kind, remaining=times)


def ledger(order: Order, kind: str = "charge") -> list[SandboxLedgerEntry]:
    return list(SandboxLedgerEntry.objects.filter(reference=f"order:{order.pk}", kind=kind))


def stock_of(item: Product) -> int:
    item.refresh_from_db()
    return item.stock
