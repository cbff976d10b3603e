"""The database settings' working part: how a connection is kept, and what SQLite needs to serve three processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def database(config: dict[str, Any], *, conn_max_age: int) -> dict[str, Any]:
    """The DATABASES entry for a parsed DATABASE_URL.

    Persistent connections: web requests and worker tasks reuse one connection per
    process instead of paying a PostgreSQL handshake each time. Health checks make a
    connection that died while idle get replaced before it is used.
    """
    config["CONN_MAX_AGE"] = conn_max_age
    config["CONN_HEALTH_CHECKS"] = True
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets web, worker and beat read while one of them writes; IMMEDIATE
        # transactions plus a busy timeout make writers queue instead of failing.
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    return config
