"""The client's address, as login lockouts (django-axes) and request limits key it."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the address the outermost one saw.

    Each proxy appends the address it got the request from to X-Forwarded-For, so
    the N-th entry from the right is what the first trusted proxy saw; anything
    further left came from the client and can be forged. (django-ipware guesses
    from public and private ranges instead; a lockout key should not be a guess.)
    """
    count = settings.TRUSTED_PROXY_COUNT
    if count:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= count:
            return hops[-count]
    return request.META.get("REMOTE_ADDR", "")
