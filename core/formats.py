"""Amounts and counts for people, in the shop's currency and locale (SHOP_CURRENCY, SHOP_LOCALE).

Pages and emails show "€1,531,854.00", not "1531854.00"; CSV files and the JSON
API keep plain machine-readable numbers. Babel knows every locale's grouping,
decimal sign and currency symbol.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from babel import Locale
from babel.numbers import format_currency, format_decimal
from django.conf import settings


def money(amount: Decimal | float | int | str | None, currency: str | None = None) -> str:
    """An amount in the shop's currency (or `currency`), for people; '' for no amount."""
    if amount in (None, ""):
        return ""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    return format_currency(value, currency or settings.SHOP_CURRENCY, locale=settings.SHOP_LOCALE)


def count(number: int | str | None) -> str:
    """A count with the locale's grouping (12,345); '' for none."""
    if number in (None, ""):
        return ""
    try:
        return format_decimal(int(number), locale=settings.SHOP_LOCALE)
    except (TypeError, ValueError):
        return str(number)


def browser_locale() -> str:
    """SHOP_LOCALE as the BCP 47 tag that JavaScript's Intl.NumberFormat takes (en_US -> en-US)."""
    return str(Locale.parse(settings.SHOP_LOCALE)).replace("_", "-")
