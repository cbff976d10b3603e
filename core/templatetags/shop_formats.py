"""Template filters for amounts and counts: {{ order.total|money }}, {{ report.summary.order_count|count }}."""

from __future__ import annotations

from django import template

from core import formats

register = template.Library()
register.filter("money", formats.money)
register.filter("count", formats.count)


@register.simple_tag
def browser_locale() -> str:
    """The shop's locale for scripts that format numbers in the page."""
    return formats.browser_locale()
