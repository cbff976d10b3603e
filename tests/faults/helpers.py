"""The fault suite's shared parts: the shop under test, customers placing orders, and the checks after a fault.

Every scenario ends with the same question, asked of the database the processes
used and of a real SMTP server: was anything lost, and was anything done twice?
"""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.error
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connections
from django.db.models import Sum
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from notifications.models import Notification
from orders.models import Order, OrderLine, Product
from sandbox.models import SandboxLedgerEntry
from tests.factories import ProductFactory
from tests.support.processes import wait_for
from tests.support.servers import HttpSession, PostgresServer, RedisServer
from tests.support.smtp import SmtpServer

# The Django database alias of a test's own PostgreSQL, once the test database is copied into it.
FAULTS_DB = "faults"
SWEEPS = ("orders.tasks.check_pending_orders", "notifications.tasks.requeue_stale_notifications")


@dataclass
class Shop:
    """What a scenario runs: products, a logged-in customer, and the environment of its processes."""

    env: dict[str, str]
    redis: RedisServer
    smtp: SmtpServer
    session_key: str
    skus: list[str]
    stock_before: dict[str, int]
    db: str = "default"  # the database alias where the processes keep their data

    @classmethod
    def create(cls, web_env: dict[str, str], redis: RedisServer, smtp: SmtpServer, customer: object) -> Shop:
        products = [ProductFactory(stock=10_000, price=Decimal("5.00")) for _ in range(3)]
        every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
        for task in SWEEPS:  # what beat runs every minute in production, every second here
            PeriodicTask.objects.create(name=task, task=task, interval=every_second, expire_seconds=5)
        login = Client()
        login.force_login(customer)
        env = {
            **web_env,
            "CELERY_BROKER_URL": redis.url,
            "EMAIL_URL": smtp.url,
            "EMAIL_RATE_LIMIT": "off",
            "PAYMENT_SANDBOX_LATENCY_MS": "50",
            # Short enough that the sweeps recover lost work within the test.
            "ORDER_REQUEUE_AFTER": "2s",
            "ORDER_LEASE_TIMEOUT": "10s",
            "NOTIFICATION_REQUEUE_AFTER": "2s",
            "NOTIFICATION_LEASE_TIMEOUT": "10s",
        }
        return cls(
            env,
            redis,
            smtp,
            login.cookies["sessionid"].value,
            [p.sku for p in products],
            {p.sku: p.stock for p in products},
        )

    def move_to(self, server: PostgresServer) -> None:
        """Copy the test database, with everything made so far, into the test's own PostgreSQL and use it from now on."""
        test_db = connections["default"].settings_dict
        server.copy_database(
            f"postgres://{test_db['USER']}:{test_db['PASSWORD'] or ''}@{test_db['HOST']}:{test_db['PORT'] or 5432}"
            f"/{test_db['NAME']}"
        )
        # A connection made here, not declared in DATABASES: Django's test case allows such
        # connections, and pytest-django has no test database to create for it.
        settings = {**test_db, "NAME": server.name, "HOST": "127.0.0.1", "PORT": server.port, "USER": "postgres"}
        connections[FAULTS_DB] = connections["default"].__class__({**settings, "PASSWORD": ""}, alias=FAULTS_DB)
        self.env["DATABASE_URL"] = server.url
        self.db = FAULTS_DB

    def restart_postgres(self, server: PostgresServer, mode: str = "fast") -> None:
        """Restart the test's own PostgreSQL (ending every session), and drop this test's own connection to it.

        "immediate" is a crash: what PostgreSQL had not yet written of its log is lost.
        """
        server.restart(mode)
        connections[FAULTS_DB].close()

    def orders(self, ids: list[int]) -> list[Order]:
        return list(Order.objects.using(self.db).filter(pk__in=ids).order_by("pk"))


@dataclass
class Customers:
    """Clients placing orders over HTTP from several threads, each retrying a 503 or a refused connection.

    Every order has an Idempotency-Key that its retries repeat, as a well-behaved
    client's would, so a retry after an outage never places a second order.
    """

    base_url: str
    session_key: str
    skus: list[str]
    clients: int = 3
    orders_each: int = 10
    pause: float = 0.1
    placed: list[int] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def start(self) -> Customers:
        for thread in self.threads:
            thread.start()
        return self

    def wait(self, timeout: float = 120) -> list[int]:
        """Wait until every client has placed all its orders; the ids of the orders placed."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), f"clients still placing orders: {self.answers}"
        assert not self.errors, self.errors
        return sorted(self.placed)

    def count(self) -> int:
        with self.lock:
            return len(self.placed)

    def _client(self) -> None:
        http = HttpSession(self.base_url, self.session_key)
        rng = random.Random()
        for _ in range(self.orders_each):
            lines = [{"sku": rng.choice(self.skus), "quantity": rng.randint(1, 3)}]
            try:
                order_id = self._place(http, lines, uuid.uuid4().hex)
            except AssertionError as exc:
                with self.lock:
                    self.errors.append(str(exc))
                return
            with self.lock:
                self.placed.append(order_id)
            time.sleep(self.pause)

    def _place(self, http: HttpSession, lines: list[dict], key: str, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response = http.request("POST", "/api/orders/", {"lines": lines}, {"Idempotency-Key": key}, timeout=10)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                with self.lock:
                    self.answers[type(exc).__name__] += 1
                time.sleep(0.5)
                continue
            with self.lock:
                self.answers[response.status] += 1
            if response.status == 202:
                return response.json()["id"]  # type: ignore[index]
            assert response.status == 503, f"POST /api/orders/ answered {response.status}: {response.body[:500]!r}"
            assert response.headers.get("Retry-After"), "a 503 without Retry-After"
            time.sleep(min(float(response.headers["Retry-After"]), 1.0))
        raise AssertionError(f"no order placed within {timeout}s; answers so far {self.answers}")


def wait_until_settled(shop: Shop, ids: list[int], timeout: float = 120) -> None:
    """Wait until every order is final and its email sent; on timeout, say what is not and where it stopped."""

    def unsettled() -> list[tuple]:
        waiting = [("order", o.pk, o.status, o.step, o.attempts) for o in shop.orders(ids) if not o.is_final]
        emails = Notification.objects.using(shop.db).filter(subject_object__in=[f"orders.order:{pk}" for pk in ids])
        if (sent := emails.filter(status="sent").count()) < len(ids):
            unsent = list(emails.exclude(status="sent").values_list("subject_object", "status"))
            waiting.append(("emails sent", sent, "of", len(ids), unsent))
        return waiting

    try:
        wait_for(lambda: not unsettled(), timeout, 0.5, f"{len(ids)} orders to be final and emailed")
    except AssertionError:
        raise AssertionError(f"not settled after {timeout}s: {unsettled()}") from None


ORDER_IN_SUBJECT = re.compile(r"#(\d+)\b")


def emails_per_order(smtp: SmtpServer) -> Counter:
    with smtp.inbox.lock:
        return Counter(int(ORDER_IN_SUBJECT.search(m["Subject"]).group(1)) for m in smtp.inbox.messages)  # type: ignore[union-attr]


def assert_each_order_done_once(shop: Shop, ids: list[int]) -> None:
    """Nothing lost, nothing twice: every order placed completed, charged once, its stock moved once, emailed once.

    Call it after wait_until_settled, once the workers have stopped, so that a
    duplicate still on its way would already have been delivered.
    """
    orders = shop.orders(ids)
    assert [order.pk for order in orders] == ids, "orders answered 202 are missing from the database"
    assert Counter(order.status for order in orders) == {Order.Status.COMPLETED: len(ids)}, [
        (o.pk, o.status, o.failure_reason) for o in orders if o.status != Order.Status.COMPLETED
    ]

    ledger = SandboxLedgerEntry.objects.using(shop.db).filter(reference__in=[f"order:{pk}" for pk in ids])
    charges = Counter(ledger.filter(kind="charge").values_list("reference", flat=True))
    assert charges == {f"order:{pk}": 1 for pk in ids}, {ref: n for ref, n in charges.items() if n != 1}
    assert not ledger.filter(kind="refund").exists()

    ordered = dict(
        OrderLine.objects.using(shop.db).filter(order_id__in=ids).values_list("product__sku").annotate(Sum("quantity"))
    )
    stock_after = dict(Product.objects.using(shop.db).filter(sku__in=shop.skus).values_list("sku", "stock"))
    moved = {sku: shop.stock_before[sku] - stock_after[sku] for sku in shop.skus}
    assert moved == {sku: ordered.get(sku, 0) for sku in shop.skus}

    emails = emails_per_order(shop.smtp)
    assert {pk: emails[pk] for pk in ids if emails[pk] != 1} == {}, "emails per order, where not one"
    assert set(emails) <= set(ids), "emails for orders nobody placed"
