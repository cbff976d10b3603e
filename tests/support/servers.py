"""Throwaway servers that a test may stop and start, and an HTTP client for real web processes."""

from __future__ import annotations

import http.cookiejar
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import redis

from tests.support.processes import PROJECT_ROOT, ManagedProcess, free_port, wait_for


def _load_services() -> ModuleType:
    """bin/services.py, the script that starts throwaway servers for bin/test (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("backoffice_services", PROJECT_ROOT / "bin" / "services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


services = _load_services()


# A Redis that refuses writes once full, as compose runs it (noeviction); fill() fills it.
FULL_AT_4MB = ("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")


class RedisServer:
    """A redis-server of the test's own, on a port of its own, that the test can stop and restart."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.binary = binary
        self.extra = list(extra)  # e.g. ["--replicaof", "127.0.0.1", "6379"]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 10, 0.05, "the test's redis-server to answer")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a server whose last snapshot fails refuses to exit
                self.process.kill()
                self.process.wait(timeout=10)

    def fill(self) -> None:
        """Write ballast until this Redis, started with FULL_AT_4MB, refuses writes (OOM) from then on."""
        client = redis.Redis.from_url(self.url)
        for number in range(10_000):
            try:
                client.set(f"ballast:{number}", b"x" * 10_000)
            except redis.OutOfMemoryError:
                return
        raise AssertionError("Redis took every write: it should have refused them past maxmemory")

    def drop_ballast(self) -> None:
        """Delete what fill() wrote: Redis takes writes again."""
        client = redis.Redis.from_url(self.url)
        client.delete(*client.keys("ballast:*"))

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitMQServer:
    """A RabbitMQ node of the test's own (bin/services.py starts it), on ports of its own, that the test can restart.

    Stopping it is a clean shutdown and starting it again brings back the same node
    from its data folder, so quorum queues and their messages survive the restart.
    Booting a node takes 10 s or more (the first boot on a busy machine, 30-40 s).
    """

    def __init__(self) -> None:
        assert services.rabbitmq_server(), "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        self.port = free_port()
        self.record: dict | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> RabbitMQServer:
        if self.record is None:
            self.record = services.init_rabbitmq(self.port)
        else:
            services.start_rabbitmq_node(self.record)
        return self

    def stop(self) -> None:
        if self.record is not None:
            services.stop_rabbitmq(self.record)

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.record is not None:
            services.stop_rabbitmq(self.record)
            shutil.rmtree(self.record["root"], ignore_errors=True)


def own_broker_server() -> RedisServer | RabbitMQServer:
    """A broker server of the test's own, of the kind the suite runs on (CELERY_BROKER_URL): Redis or RabbitMQ.

    A throwaway Redis keeps nothing when it stops (no persistence); RabbitMQ's
    quorum queues keep every message.
    """
    from django.conf import settings

    return RabbitMQServer() if settings.BROKER_IS_RABBITMQ else RedisServer()


class SentinelServer:
    """A Redis Sentinel of the test's own (`redis-server --sentinel`), watching one master under a name."""

    def __init__(self, master: RedisServer, name: str) -> None:
        self.master = master
        self.name = name
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="test-sentinel-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        # Sentinel rewrites its configuration file, so it gets one of its own.
        config = self.dir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
            # Fail over within seconds of the master going down, for tests (30 s and 3 min by default).
            f"sentinel down-after-milliseconds {self.name} 1000\nsentinel failover-timeout {self.name} 10000\n"
        )
        self.process = subprocess.Popen(
            [self.master.binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _knows_master(client, self.name), 10, 0.05, "the test's sentinel to name its master")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def __enter__(self) -> SentinelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _knows_master(client: redis.Redis, name: str) -> bool:
    try:
        return client.sentinel_get_master_addr_by_name(name) is not None
    except redis.ConnectionError:
        return False


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class PostgresServer:
    """A PostgreSQL cluster of the test's own (initdb, trust auth) on a port of its own, that the test can restart.

    `copy_database(source_url)` fills its database `backoffice` with a copy of another
    database, schema and rows, so a test can build its data with the usual factories
    in the test database and then run processes against the copy.
    """

    name = "backoffice"

    def __init__(self) -> None:
        assert services.pg_bin("initdb"), "PostgreSQL is not installed (apt-get install postgresql)"
        self.port = free_port()
        self.record: dict | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.name}"

    def start(self) -> PostgresServer:
        if self.record is None:
            self.record = services.init_postgres(self.port)
        else:
            services.pg_ctl(self.record, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" ends every session first, as a restart by an operator does."""
        assert self.record is not None
        services.pg_ctl(self.record, "stop", mode=mode)

    def restart(self, mode: str = "fast") -> None:
        assert self.record is not None
        services.pg_ctl(self.record, "restart", mode=mode)

    def copy_database(self, source_url: str) -> None:
        """Create this server's database as a copy of the one at source_url (pg_dump piped into psql)."""
        source = urlsplit(source_url)
        psql, pg_dump = services.pg_bin("psql"), services.pg_bin("pg_dump")
        assert psql and pg_dump
        target = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        subprocess.run([psql, *target, "-d", "postgres", "-qc", f"CREATE DATABASE {self.name}"], check=True)
        dump = subprocess.Popen(
            [
                pg_dump,
                "-h",
                source.hostname or "127.0.0.1",
                "-p",
                str(source.port or 5432),
                "-U",
                source.username or "postgres",
                "--no-owner",
                "--no-privileges",
                source.path.lstrip("/"),
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "PGPASSWORD": source.password or ""},
        )
        subprocess.run(
            [psql, *target, "-d", self.name, "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=dump.stdout,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        assert dump.wait() == 0, "pg_dump failed"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.record is not None:
            services.remove_postgres(self.record)


class WebProcess(ManagedProcess):
    """gunicorn serving the project, as in production."""

    def __init__(self, env: dict[str, str], workers: int = 2, threads: int = 1) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "config/gunicorn.py",
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ]
        super().__init__(args, {**env, "ALLOWED_HOSTS": "127.0.0.1,localhost"}, label="web")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> WebProcess:
        def answers() -> bool:
            if not self.alive():
                raise AssertionError(f"web exited early:\n{self.output()[-4000:]}")
            try:
                urllib.request.urlopen(f"{self.base_url}/accounts/login/", timeout=2)
            except urllib.error.HTTPError:
                return True  # it answered
            except OSError:
                return False
            return True

        wait_for(answers, timeout, 0.2, "gunicorn to answer")
        return self


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a redirect as it is (its status and Location), as the API tests expect of every answer."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def json(self) -> object:
        return json.loads(self.body)


class HttpSession:
    """A browser-like client for a real server: a session cookie and a CSRF token, JSON in and out."""

    def __init__(self, base_url: str, session_key: str | None = None, *, follow_redirects: bool = True) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        # Django accepts the unmasked CSRF secret as the header value.
        self.csrf = secrets.token_hex(16)
        self._set_cookie("csrftoken", self.csrf)
        if session_key:
            self._set_cookie("sessionid", session_key)
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPCookieProcessor(self.jar)]
        if not follow_redirects:
            handlers.append(_NoRedirects())
        self.opener = urllib.request.build_opener(*handlers)

    def _set_cookie(self, name: str, value: str) -> None:
        self.jar.set_cookie(
            http.cookiejar.Cookie(
                0, name, value, None, False, "127.0.0.1", False, False, "/", True, False, None, True, None, None, {}
            )
        )

    def request(
        self,
        method: str,
        path: str,
        payload: object = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        form: dict | None = None,
    ) -> Response:
        """Send `payload` as JSON, or `form` as an HTML form would (the admin's actions)."""
        if form is not None:
            data, content_type = urllib.parse.urlencode(form, doseq=True).encode(), "application/x-www-form-urlencoded"
        else:
            data, content_type = None if payload is None else json.dumps(payload).encode(), "application/json"
        return self.send_bytes(method, path, data, content_type, headers, timeout)

    def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Response:
        """POST an HTML form (urlencoded), as a browser does."""
        return self.request("POST", path, headers=headers, form=fields)

    def send_bytes(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str,
        headers: dict[str, str] | None,
        timeout: float,
    ) -> Response:
        """Send these exact bytes with this Content-Type (the CSRF token and Referer a browser would send, too)."""
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("X-CSRFToken", self.csrf)
        request.add_header("Referer", self.base_url + "/")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        started = time.monotonic()
        try:
            with self.opener.open(request, timeout=timeout) as reply:
                return Response(reply.status, dict(reply.headers), reply.read(), time.monotonic() - started)
        except urllib.error.HTTPError as error:
            return Response(error.code, dict(error.headers), error.read(), time.monotonic() - started)
