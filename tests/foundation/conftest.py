"""Fixtures shared by the foundation tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.support.broker import throwaway_vhost


@pytest.fixture
def vhost() -> Iterator[str]:
    """A brand-new RabbitMQ vhost on the suite's broker, open to its user and deleted afterwards; its URL."""
    with throwaway_vhost(settings.CELERY_BROKER_URL) as url:
        yield url
