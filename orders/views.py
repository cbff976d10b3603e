"""Customer-facing order pages and JSON endpoints. Every view sees only the caller's own orders."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from config.api import api_view, json_error, read_json
from core.errors import FieldErrors
from orders.forms import NewOrderForm, clean_idempotency_key, parse_order_request
from orders.models import Order, Product
from orders.services import actions, placing


def order_json(order: Order) -> dict[str, object]:
    return {
        "id": order.pk,
        "status": order.status,
        "step": order.step,
        "total": str(order.total),
        "lines": [
            {
                "sku": line.product.sku,
                "name": line.product.name,
                "quantity": line.quantity,
                "unit_price": str(line.unit_price),
            }
            for line in order.lines.select_related("product")
        ],
        "failure_reason": order.failure_reason,
        "tracking_number": order.tracking_number,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }


@api_view(methods=("POST",))
def api_place_order(request: HttpRequest) -> HttpResponse:
    """POST /api/orders/ → 202 with Location, or 400 with field errors and nothing saved."""
    try:
        idempotency_key = clean_idempotency_key(request.headers.get("Idempotency-Key"))
        lines = parse_order_request(read_json(request, max_bytes=settings.ORDER_MAX_BODY_BYTES))
        placed = placing.place_order(customer_id=request.user.pk, lines=lines, idempotency_key=idempotency_key)
    except FieldErrors as exc:
        return json_error(400, errors=exc.errors)
    except placing.IdempotencyConflict as exc:
        return json_error(400, errors={"Idempotency-Key": [str(exc)]})
    order = placed.order
    url = reverse("orders:api-detail", args=[order.pk])
    response = JsonResponse(
        {"id": order.pk, "status": order.status, "url": url, "page_url": reverse("orders:detail", args=[order.pk])},
        status=202,
    )
    response["Location"] = url
    if not placed.created:
        response["Idempotent-Replayed"] = "true"
    return response


@api_view(methods=("GET",))
def api_order_detail(request: HttpRequest, order_id: int) -> HttpResponse:
    order = Order.objects.filter(pk=order_id, customer=request.user).first()
    if order is None:
        return json_error(404, "No such order.")
    return JsonResponse(order_json(order))


@api_view(methods=("POST",))
def api_cancel_order(request: HttpRequest, order_id: int) -> HttpResponse:
    try:
        order = actions.cancel_order(order_id, customer_id=request.user.pk, actor_id=request.user.pk)
    except Order.DoesNotExist:
        return json_error(404, "No such order.")
    except actions.CancelRefused as exc:
        return json_error(409, str(exc))
    return JsonResponse({"id": order.pk, "status": order.status})


@login_required
def order_list(request: HttpRequest) -> HttpResponse:
    orders = Order.objects.filter(customer=request.user).order_by("-created_at", "-id")
    page = Paginator(orders, 20).get_page(request.GET.get("page"))
    return render(request, "orders/order_list.html", {"page": page})


@login_required
@require_http_methods(["GET", "POST"])
def order_new(request: HttpRequest) -> HttpResponse:
    products = Product.objects.filter(stock__gt=0).order_by("name")
    if request.method == "POST":
        form = NewOrderForm(request.POST, products=products)
        if form.is_valid():
            lines = form.line_requests()
            try:
                placed = placing.place_order(
                    customer_id=request.user.pk, lines=lines, idempotency_key=form.cleaned_data["idempotency_key"]
                )
            except FieldErrors as exc:
                form.add_service_errors(exc.errors, lines)
            except placing.IdempotencyConflict:
                form.add_error(None, "This form was already submitted with other quantities; reload the page.")
            else:
                messages.success(request, f"Order #{placed.order.pk} placed. We are processing it now.")
                return redirect("orders:detail", order_id=placed.order.pk)
    else:
        # A key per form render, so a double submit places one order.
        form = NewOrderForm(products=products, initial={"idempotency_key": uuid.uuid4().hex})
    return render(request, "orders/order_new.html", {"form": form})


@login_required
def order_detail(request: HttpRequest, order_id: int) -> HttpResponse:
    order = get_object_or_404(Order.objects.prefetch_related("lines__product"), pk=order_id, customer=request.user)
    return render(request, "orders/order_detail.html", {"order": order})
