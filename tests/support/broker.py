"""Reading the real Redis broker's queues in tests."""

from __future__ import annotations

import json

import redis

# Kombu's Redis transport keeps a message with priority N in a list of its own:
# "<queue>\x06\x16<step>" for the steps 3, 6 and 9.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]


def messages_in(client: redis.Redis, queue: str) -> list[dict]:
    """Every message waiting in a queue, whatever its priority, decoded."""
    return [json.loads(raw) for key in queue_keys(queue) for raw in client.lrange(key, 0, -1)]
