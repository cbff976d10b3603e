"""A token bucket in the database, shared by every worker and every campaign chunk.

Celery's own rate_limit is per worker and counts tasks, not emails, and a message
it holds back occupies a worker slot (acks_late, prefetch 1). This bucket counts
emails across all workers; a sender that finds it empty does not wait: it is told
how long until tokens are free and re-schedules itself.

The bucket lives in the database because that is the one store every process
shares in every set-up (the embedded local one has no Redis). Each take is one
short row-locked transaction, and chunk senders take many tokens at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import SendRateBucket


@dataclass(frozen=True)
class RateLimit:
    """At most `count` emails in any `period` seconds, with bursts of up to a tenth of that."""

    count: int
    period: int

    @property
    def capacity(self) -> int:
        return max(1, self.count // 10)

    @property
    def refill_per_second(self) -> float:
        # The burst and the refill together never exceed `count` in one period.
        return max(self.count - self.capacity, 1) / self.period

    # Three tiers share the budget: order emails (and the other transactional ones) take
    # any token; emails any visitor can ask for (password reset, sign-up) leave a tenth
    # of the burst, at least one token, so a flood of them never delays an order email;
    # bulk senders (campaigns, the digest) leave a fifth, at least two, so neither tier
    # waits behind a campaign. Spare tokens go to whoever asks: nothing idles.

    def _reserve(self, share: int, floor: int) -> int:
        return max(0, min(max(floor, self.capacity // share), self.capacity - 1))

    @property
    def visitor_reserve(self) -> int:
        """Tokens reset and sign-up emails leave in the bucket for order emails."""
        return self._reserve(10, 1)

    @property
    def bulk_reserve(self) -> int:
        """Tokens bulk senders leave in the bucket, for order emails and then reset and sign-up emails."""
        return max(self._reserve(5, 2), self.visitor_reserve)


@dataclass(frozen=True)
class Grant:
    granted: int
    wait: float  # seconds until the next token is usable, when fewer were granted than asked


def take(name: str, wanted: int, limit: RateLimit, *, reserve: int = 0) -> Grant:
    """Take up to `wanted` tokens, leaving `reserve` in the bucket; never blocks."""
    now = timezone.now()
    try:
        with transaction.atomic():
            SendRateBucket.objects.get_or_create(name=name, defaults={"tokens": limit.capacity, "updated_at": now})
    except IntegrityError:
        pass  # created by a concurrent take
    with transaction.atomic():
        bucket = SendRateBucket.objects.select_for_update().get(name=name)
        now = timezone.now()
        elapsed = max(0.0, (now - bucket.updated_at).total_seconds())
        tokens = min(float(limit.capacity), bucket.tokens + elapsed * limit.refill_per_second)
        usable = tokens - reserve
        granted = max(0, min(wanted, math.floor(usable)))
        bucket.tokens = tokens - granted
        bucket.updated_at = now
        bucket.save(update_fields=["tokens", "updated_at"])
    wait = 0.0 if granted == wanted else max(0.05, (1 - (bucket.tokens - reserve)) / limit.refill_per_second)
    return Grant(granted, wait)
