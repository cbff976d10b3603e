"""Orders: products, orders and their lines, payments and the processing history."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Product(models.Model):
    sku = models.CharField("SKU", max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(0)])
    stock = models.IntegerField(default=0, validators=[MinValueValidator(0)])

    class Meta:
        ordering = ["sku"]
        constraints = [
            # The last line of defence against overselling: reserving stock is an
            # F() decrement, and two orders racing for the last unit cannot both
            # pass this check in PostgreSQL.
            models.CheckConstraint(condition=Q(stock__gte=0), name="product_stock_not_negative"),
            models.CheckConstraint(condition=Q(price__gte=0), name="product_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} · {self.name}"


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Step(models.TextChoices):
        """The last finished step of the pipeline; the order of the values is the order of the steps."""

        NONE = "", "Not started"
        RESERVED = "reserved", "Stock reserved"
        CHARGED = "charged", "Charged"
        SHIPPED = "shipped", "Shipped"
        NOTIFIED = "notified", "Customer notified"

    FINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    step = models.CharField(max_length=16, choices=Step.choices, default=Step.NONE, blank=True)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    failure_reason = models.TextField(blank=True)
    # default rather than auto_now_add, so seed_orders can place orders in the past.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The lease: which task holds the order, and until when. An expired lease is what "stuck" means.
    lease_owner = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a task claimed this order.")
    # When the sweep last re-sent this order's task, so it does not re-send it every minute.
    requeued_at = models.DateTimeField(null=True, blank=True)
    # Each replay of a failed order gets fresh payment idempotency keys.
    replays = models.PositiveIntegerField(default=0)
    tracking_number = models.CharField(max_length=64, blank=True)
    # NULL, not "", for "no key": the unique constraint below only covers orders that have one.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_fingerprint = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # A client retrying POST /api/orders/ with the same Idempotency-Key gets the same order.
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="order_unique_idempotency_key_per_customer",
            ),
            models.CheckConstraint(condition=Q(total__gte=0), name="order_total_not_negative"),
        ]
        indexes = [
            # The sweep looks for pending orders and expired leases every minute;
            # a partial index keeps that cheap when completed orders number millions.
            models.Index(
                fields=["status", "lease_expires_at"],
                name="order_unfinished_idx",
                condition=Q(status__in=["pending", "processing"]),
            ),
            # Sales reports read completed orders by the date they were placed.
            models.Index(fields=["created_at"], name="order_completed_created_idx", condition=Q(status="completed")),
            # "My orders", newest first.
            models.Index(fields=["customer", "-created_at"], name="order_customer_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"Order #{self.pk}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES

    @property
    def is_compensating(self) -> bool:
        """A processing order with a failure reason is being rolled back (refund, stock release)."""
        return self.status == self.Status.PROCESSING and bool(self.failure_reason)

    def step_done(self, step: Order.Step) -> bool:
        order = list(self.Step)
        return order.index(self.Step(self.step)) >= order.index(step)


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="order_lines")
    quantity = models.PositiveIntegerField()
    # Fixed when the order is placed, so later price changes do not alter it.
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="orderline_quantity_positive"),
            models.UniqueConstraint(fields=["order", "product"], name="orderline_one_line_per_product"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.product_id}"

    @property
    def subtotal(self) -> object:
        return self.unit_price * self.quantity


class Payment(models.Model):
    """A charge or refund: written as an intent before the gateway is called, then its outcome."""

    class Kind(models.TextChoices):
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending (intent recorded)"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="payments")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    # Derived from the order (and its replay number); the gateway dedups on it.
    idempotency_key = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    provider_reference = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount} for order #{self.order_id} ({self.status})"


class OrderEvent(models.Model):
    """Processing history that staff read in the admin: attempts, retries, failures, replays."""

    class Kind(models.TextChoices):
        ATTEMPT = "attempt", "Attempt started"
        RETRY = "retry", "Retry scheduled"
        FAILED = "failed", "Failed"
        COMPENSATED = "compensated", "Compensated"
        CANCELLED = "cancelled", "Cancelled"
        REPLAYED = "replayed", "Replayed"
        REQUEUED = "requeued", "Re-enqueued"
        STOPPED = "stopped", "Stopped"

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    task_id = models.CharField(max_length=255, blank=True)
    message = models.TextField(blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # /metrics counts the retries of the last day on every scrape; only retry rows are indexed.
            models.Index(fields=["created_at"], name="orderevent_retry_idx", condition=Q(kind="retry")),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on order #{self.order_id}"
