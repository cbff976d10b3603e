"""Staff views of products, orders and payments. Actions call orders.services."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_links import task_id_html, task_result_links
from orders.models import Order, OrderEvent, OrderLine, Payment, Product
from orders.services import actions


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "stock")
    list_editable = ("price", "stock")
    search_fields = ("sku", "name")
    ordering = ("sku",)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class OrderLineInline(ReadOnlyInline):
    model = OrderLine
    fields = ("product", "quantity", "unit_price")
    readonly_fields = fields


class PaymentInline(ReadOnlyInline):
    model = Payment
    fields = ("created_at", "kind", "amount", "status", "idempotency_key", "provider_reference", "error", "task")
    readonly_fields = fields
    verbose_name_plural = "payments and refunds"

    @admin.display(description="task")
    def task(self, payment: Payment) -> SafeString | str:
        return task_id_html(payment.task_id, task_result_links([payment.task_id]))


class OrderEventInline(ReadOnlyInline):
    model = OrderEvent
    fields = ("created_at", "kind", "task", "message", "actor")
    readonly_fields = fields
    verbose_name_plural = "processing history (attempts, retries, errors, replays)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[OrderEvent]:
        return super().get_queryset(request).select_related("actor")

    @admin.display(description="Celery task")
    def task(self, event: OrderEvent) -> SafeString | str:
        # One lookup per event row; an order has a handful of events.
        return task_id_html(event.task_id, task_result_links([event.task_id]))


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "customer", "status", "step", "total", "attempts", "created_at", "short_failure")
    list_filter = ("status", "step", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("=id", "customer__username", "customer__email", "lines__product__sku")
    list_select_related = ("customer",)
    inlines = (OrderLineInline, PaymentInline, OrderEventInline)
    actions = ("process_selected", "retry_failed")
    readonly_fields = (
        "customer",
        "status",
        "step",
        "total",
        "failure_reason",
        "created_at",
        "updated_at",
        "lease_owner_link",
        "lease_expires_at",
        "attempts",
        "replays",
        "requeued_at",
        "tracking_number",
        "idempotency_key",
    )
    fieldsets = (
        (None, {"fields": ("customer", "status", "step", "total", "failure_reason", "tracking_number")}),
        ("Processing", {"fields": ("lease_owner_link", "lease_expires_at", "attempts", "replays", "requeued_at")}),
        ("Dates", {"fields": ("created_at", "updated_at", "idempotency_key")}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # customers place orders; see orders.services.place_order

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # orders carry payments; they are failed or cancelled, never deleted

    @admin.display(description="failure")
    def short_failure(self, order: Order) -> str:
        return order.failure_reason[:80]

    @admin.display(description="lease held by task")
    def lease_owner_link(self, order: Order) -> SafeString | str:
        return task_id_html(order.lease_owner, task_result_links([order.lease_owner]))

    @admin.action(description="Process selected orders", permissions=["change"])
    def process_selected(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        sent = sum(actions.requeue_order(pk, actor_id=request.user.pk) for pk in queryset.values_list("pk", flat=True))
        skipped = queryset.count() - sent
        self.message_user(request, f"Sent {sent} order(s) to the workers.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped}: only pending orders or orders whose lease expired can be sent.",
                messages.WARNING,
            )

    @admin.action(description="Retry failed orders", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        replayed = sum(
            actions.retry_failed_order(pk, actor_id=request.user.pk) for pk in queryset.values_list("pk", flat=True)
        )
        skipped = queryset.count() - replayed
        self.message_user(request, f"Replaying {replayed} failed order(s) from the start.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"Skipped {skipped} that are not failed.", messages.WARNING)


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ("id", "order_link", "kind", "amount", "status", "idempotency_key", "created_at")
    list_filter = ("kind", "status", "created_at")
    search_fields = ("idempotency_key", "provider_reference", "=order__id")
    readonly_fields = [field.name for field in Payment._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="order")
    def order_link(self, payment: Payment) -> SafeString:
        url = reverse("admin:orders_order_change", args=[payment.order_id])
        return format_html('<a href="{}">#{}</a>', url, payment.order_id)
