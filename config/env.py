"""A small, strict reader for settings that come from the environment.

Every reader names the variable in its error, so a bad deploy fails at start-up
with a message an operator can act on, instead of half-working later.
"""

from __future__ import annotations

import math
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_MISSING: Any = object()


def _raw(name: str, default: Any) -> str | Any:
    value = os.environ.get(name)
    if value is None:
        if default is _MISSING:
            raise ImproperlyConfigured(f"{name} is required but is not set in the environment.")
        return default
    return value.strip()


def env_str(name: str, default: Any = _MISSING) -> str:
    return _raw(name, default)


def env_bool(name: str, default: Any = _MISSING) -> bool:
    value = _raw(name, default)
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off.")


def env_int(name: str, default: Any = _MISSING, *, minimum: int | None = None) -> int:
    value = _raw(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    return number


def env_port(name: str, default: Any = _MISSING) -> int:
    """A TCP port, or 0 for off."""
    port = env_int(name, default, minimum=0)
    if port > 65535:
        raise ImproperlyConfigured(f"{name}={port} is not a TCP port (1-65535, or 0 for off).")
    return port


def env_float(
    name: str, default: Any = _MISSING, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    value = _raw(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name}={value!r} is not a number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}.")
    return number


def env_list(name: str, default: Any = _MISSING) -> list[str]:
    value = _raw(name, default)
    if isinstance(value, list):
        return value
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: Any, choices: tuple[str, ...]) -> str:
    """One of `choices`, read case-insensitively (they are upper case)."""
    value = _raw(name, default).upper()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def env_time_zone(name: str, default: Any = _MISSING) -> str:
    value = _raw(name, default)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(f"{name}={value!r} is not an IANA time zone such as Europe/Amsterdam.") from None
    return value


def env_currency(name: str, default: Any = _MISSING) -> str:
    value = _raw(name, default).upper()
    if value not in list_currencies():
        raise ImproperlyConfigured(f"{name}={value!r} is not an ISO 4217 currency code such as EUR.")
    return value


def env_locale(name: str, default: Any = _MISSING) -> str:
    value = _raw(name, default)
    try:
        Locale.parse(value)
    except (ValueError, UnknownLocaleError):
        raise ImproperlyConfigured(f"{name}={value!r} is not a locale such as en_US or nl_NL.") from None
    return value


def env_secret_key(name: str, *, debug: bool, key_file: Path) -> str:
    """The key from the environment; required when DEBUG is off, made up once and kept in `key_file` with it on."""
    key = _raw(name, "")
    if key:
        return key
    if not debug:
        raise ImproperlyConfigured(f"{name} is required when DEBUG is off; set it in the environment.")
    # Local development only: a random key kept in the data folder, so that every
    # process (web, worker, beat) signs with the same key and sessions survive restarts.
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse '90', '90s', '15m', '2h' or '7d' into a timedelta; raise ValueError otherwise."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    seconds = float(number) * _DURATION_UNITS[unit]
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("the duration is longer than any date can express") from None


def env_duration(name: str, default: Any = _MISSING) -> timedelta:
    value = _raw(name, default)
    if isinstance(value, timedelta):
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a duration; use seconds or a number with s, m, h or d (for example 15m)."
        ) from None


_RATE_PERIODS = {"s": 1, "m": 60, "h": 3600}


def env_rate(name: str, default: Any = _MISSING) -> tuple[int, int] | None:
    """Parse a rate such as '100/m' (per s, m or h) into (count, period seconds); '0' or 'off' turns it off."""
    value = _raw(name, default)
    if value.lower() in {"0", "off", "none", ""}:
        return None
    count, _, unit = value.partition("/")
    try:
        number = int(count)
    except ValueError:
        number = 0
    if number < 1 or unit not in _RATE_PERIODS:
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate; use a count per s, m or h (e.g. 100/m), or off.")
    return number, _RATE_PERIODS[unit]


_DATABASE_ENGINES = {"django.db.backends.postgresql", "django.db.backends.sqlite3"}


def env_database(name: str, default: str) -> dict[str, Any]:
    """Parse a database URL (postgres:// or sqlite://) into a Django DATABASES entry."""
    value = _raw(name, default)
    try:
        config = dj_database_url.parse(value)
    except Exception as exc:  # dj-database-url raises several types, all meaning "malformed"
        raise ImproperlyConfigured(f"{name} is not a valid database URL ({exc}).") from None
    if config.get("ENGINE") not in _DATABASE_ENGINES:
        raise ImproperlyConfigured(f"{name} must be a postgres:// or sqlite:// URL, got {value.split(':', 1)[0]!r}.")
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"{name} does not name a database (the path after the host).")
    return config


_EMAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "smtps": "django.core.mail.backends.smtp.EmailBackend",
    "submission": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
    "dummy": "django.core.mail.backends.dummy.EmailBackend",
}


def env_email(name: str, default: str) -> dict[str, Any]:
    """Parse an email URL such as smtp://user:pass@host:587?tls=1 or console:// into EMAIL_* settings."""
    value = _raw(name, default)
    parts = urlsplit(value)
    backend = _EMAIL_BACKENDS.get(parts.scheme)
    if backend is None:
        raise ImproperlyConfigured(
            f"{name}={value.split('://', 1)[0]!r} is not a known email scheme; use one of "
            f"{', '.join(sorted(_EMAIL_BACKENDS))} (for example smtp://user:pass@host:587?tls=1)."
        )
    settings: dict[str, Any] = {"EMAIL_BACKEND": backend}
    if backend.endswith("smtp.EmailBackend"):
        if not parts.hostname:
            raise ImproperlyConfigured(f"{name} has no host; write it as smtp://user:pass@host:port.")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"{name} has a port that is not a number.") from None
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        use_ssl = parts.scheme == "smtps" or query.get("ssl", "").lower() in _TRUE
        use_tls = parts.scheme == "submission" or query.get("tls", "").lower() in _TRUE
        if use_ssl and use_tls:
            raise ImproperlyConfigured(f"{name} asks for both ssl and tls; pick one.")
        settings.update(
            EMAIL_HOST=parts.hostname,
            EMAIL_PORT=port or (465 if use_ssl else 587 if use_tls else 25),
            EMAIL_HOST_USER=unquote(parts.username or ""),
            EMAIL_HOST_PASSWORD=unquote(parts.password or ""),
            EMAIL_USE_SSL=use_ssl,
            EMAIL_USE_TLS=use_tls,
        )
        if "timeout" in query:
            try:
                settings["EMAIL_TIMEOUT"] = float(query["timeout"])
            except ValueError:
                raise ImproperlyConfigured(f"{name} has a timeout that is not a number.") from None
    return settings
