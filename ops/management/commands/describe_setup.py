from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


def redact(url: str) -> str:
    """Drop the password from a URL (from each of a broker's ";"-separated URLs) so it can be printed."""
    if ";" in url:
        return ";".join(redact(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


class Command(BaseCommand):
    help = "Print which database, broker, email backend and time zone this process uses (no secrets)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", help="The web address to print first, for the run command.")

    def handle(self, *args: Any, url: str | None, **options: Any) -> None:
        database = settings.DATABASES["default"]
        if database["ENGINE"].endswith("sqlite3"):
            database_text = f"SQLite at {database['NAME']}"
        else:
            host = f"{database.get('HOST') or 'localhost'}:{database.get('PORT') or 5432}"
            database_text = f"PostgreSQL database {database['NAME']!r} on {host}"
        broker = settings.CELERY_BROKER_URL
        if broker.startswith("filesystem://"):
            broker_text = f"embedded file broker in {settings.CELERY_BROKER_TRANSPORT_OPTIONS['data_folder_in']}"
        elif settings.BROKER_IS_RABBITMQ:
            broker_text = f"RabbitMQ (quorum queues) at {redact(broker)}"
        elif broker.startswith("sentinel://"):
            broker_text = (
                f"Redis through Sentinel, master {settings.CELERY_BROKER_SENTINEL_MASTER!r}, at {redact(broker)}"
            )
        else:
            broker_text = f"Redis at {redact(broker)}"
        lines = []
        if url:
            lines.append(f"Web:       {url}  (admin at {url.rstrip('/')}/admin/)")
        lines += [
            f"Database:  {database_text}",
            f"Broker:    {broker_text}",
            f"Email:     {settings.EMAIL_BACKEND.rsplit('.', 2)[-2]} backend",
            f"Time zone: {settings.TIME_ZONE}   DEBUG: {'on' if settings.DEBUG else 'off'}",
        ]
        self.stdout.write("\n".join(lines))
