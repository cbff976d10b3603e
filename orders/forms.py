"""Input validation at the HTTP boundary: the JSON order request and the new-order page's form."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms
from django.conf import settings

from core.errors import FieldErrors
from orders.models import Product
from orders.services.placing import LineRequest

MAX_SKU_LENGTH = 64
MAX_IDEMPOTENCY_KEY_LENGTH = 255


def parse_order_request(data: Any) -> list[LineRequest]:
    """Turn a POST /api/orders/ body (JSON already read by config.api.read_json) into line requests.

    Raises FieldErrors naming each field at fault.
    """
    if not isinstance(data, dict):
        raise FieldErrors({"body": ['Expected a JSON object like {"lines": [{"sku": "...", "quantity": 1}]}.']})
    raw_lines = data.get("lines")
    if raw_lines is None:
        raise FieldErrors({"lines": ["This field is required."]})
    if not isinstance(raw_lines, list):
        raise FieldErrors({"lines": ["Expected a list of {sku, quantity} objects."]})
    if len(raw_lines) > settings.ORDER_MAX_LINES:
        raise FieldErrors({"lines": [f"An order can have at most {settings.ORDER_MAX_LINES} lines."]})
    errors: dict[str, list[str]] = {}
    lines = []
    for index, raw in enumerate(raw_lines):
        if not isinstance(raw, dict):
            errors[f"lines.{index}"] = ["Expected an object with sku and quantity."]
            continue
        sku, quantity = raw.get("sku"), raw.get("quantity")
        if not isinstance(sku, str) or not sku.strip():
            errors[f"lines.{index}.sku"] = ["Expected a SKU as a non-empty string."]
        elif len(sku) > MAX_SKU_LENGTH:
            errors[f"lines.{index}.sku"] = [f"A SKU has at most {MAX_SKU_LENGTH} characters."]
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            errors[f"lines.{index}.quantity"] = ["Expected a whole number."]
        if f"lines.{index}.sku" not in errors and f"lines.{index}.quantity" not in errors:
            lines.append(LineRequest(sku=sku.strip(), quantity=quantity))
    if errors:
        raise FieldErrors(errors)
    return lines


def clean_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY_LENGTH or not value.isprintable():
        raise FieldErrors(
            {"Idempotency-Key": [f"Use 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters, e.g. a UUID."]}
        )
    return value


class NewOrderForm(forms.Form):
    """The new-order page: a quantity field per product in stock."""

    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)

    def __init__(self, *args: object, products: Iterable[Product], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.products = list(products)
        for product in self.products:
            self.fields[self.field_name(product)] = forms.IntegerField(
                label=product.name, min_value=0, max_value=settings.ORDER_MAX_QUANTITY, required=False, initial=0
            )

    @staticmethod
    def field_name(product: Product) -> str:
        return f"qty_{product.pk}"

    def rows(self) -> list[tuple[Product, forms.BoundField]]:
        return [(product, self[self.field_name(product)]) for product in self.products]

    def clean(self) -> dict[str, object]:
        cleaned = super().clean()
        if not self.errors and not self.line_requests():
            raise forms.ValidationError("Choose a quantity for at least one product.")
        return cleaned

    def line_requests(self) -> list[LineRequest]:
        return [
            LineRequest(sku=product.sku, quantity=self.cleaned_data[self.field_name(product)])
            for product in self.products
            if self.cleaned_data.get(self.field_name(product))
        ]

    def add_service_errors(self, errors: dict[str, list[str]], lines: list[LineRequest]) -> None:
        """Show the service's per-line errors on the matching product fields."""
        by_sku = {product.sku: product for product in self.products}
        for path, messages in errors.items():
            parts = path.split(".")
            field = None
            if len(parts) >= 2 and parts[0] == "lines" and parts[1].isdigit() and int(parts[1]) < len(lines):
                product = by_sku.get(lines[int(parts[1])].sku)
                field = self.field_name(product) if product else None
            for message in messages:
                self.add_error(field, message)
