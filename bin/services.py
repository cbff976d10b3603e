#!/usr/bin/env python3
"""Find or start the PostgreSQL and Redis servers that the test suite talks to.

`services.py up` prints shell `export` lines for DATABASE_URL and
CELERY_BROKER_URL. It uses the URLs already in the environment when they answer,
then the localhost defaults, and otherwise starts throwaway servers from the
installed binaries under a temporary folder. `services.py down` stops the
throwaway servers it started. Only the standard library is used, so it runs
before any virtualenv exists.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

STATE = Path(tempfile.gettempdir()) / f"backoffice-test-services-{os.getuid()}.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/backoffice"
# A database number of its own, so the suite never touches a local app's queues.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/15"

INSTALL_HINT = (
    "Install them with your package manager, for example on Debian or Ubuntu:\n"
    "    sudo apt-get install postgresql redis-server\n"
    "or on macOS: brew install postgresql redis\n"
    "or point DATABASE_URL and CELERY_BROKER_URL at servers you already have."
)


def log(message: str) -> None:
    print(f"services: {message}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def redis_answers(host: str, port: int) -> bool:
    """True when a Redis server that needs no password answers PING."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def postgres_answers(url: str) -> bool:
    """True when PostgreSQL accepts a login for the URL's user (to its maintenance database)."""
    parts = urlsplit(url)
    psql = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))), None)
    if psql is None:
        # No client to log in with: a listening port is the best evidence there is.
        return port_open(parts.hostname or "127.0.0.1", parts.port or 5432)
    env = dict(os.environ, PGPASSWORD=parts.password or "", PGCONNECT_TIMEOUT="3")
    command = [
        psql, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
        "-U", parts.username or "postgres", "-d", "postgres", "-Atc", "select 1",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() == "1"


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def as_postgres_user(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root.
    if os.getuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def start_postgres() -> tuple[str, dict]:
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        sys.exit(
            f"services: PostgreSQL is not running and its binaries (initdb, pg_ctl) are not installed.\n{INSTALL_HINT}"
        )
    port = 5432 if not port_open("127.0.0.1", 5432) else free_port()
    record = init_postgres(port)
    log(f"started a throwaway PostgreSQL on port {port} ({record['data']})")
    url = f"postgres://postgres@127.0.0.1:{port}/backoffice"
    return url, record


def init_postgres(port: int) -> dict:
    """initdb a throwaway cluster (trust auth, user postgres) under a temporary folder and start it on `port`.

    Returns the record that pg_ctl() and remove_postgres() take. The fault tests
    use this too, for a server of their own that they restart.
    """
    initdb, pg_ctl_path = pg_bin("initdb"), pg_bin("pg_ctl")
    assert initdb and pg_ctl_path, "initdb and pg_ctl are not installed"
    root = Path(tempfile.mkdtemp(prefix="backoffice-test-pg-"))
    root.chmod(0o755)
    data, sockets = root / "data", root / "sockets"
    data.mkdir()
    sockets.mkdir()
    if os.getuid() == 0:
        for path in (root, data, sockets):
            shutil.chown(path, "postgres", "postgres")
    subprocess.run(
        as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    record = {"kind": "postgres", "pg_ctl": pg_ctl_path, "data": str(data), "root": str(root), "options": options}
    pg_ctl(record, "start")
    return record


def pg_ctl(record: dict, action: str, mode: str = "fast") -> None:
    """Run `pg_ctl start|stop|restart` on a cluster made by init_postgres(), waiting until it is done."""
    command = [record["pg_ctl"], "-D", record["data"], "-w", action]
    if action in {"start", "restart"}:
        command += ["-o", record["options"], "-l", str(Path(record["root"]) / "server.log")]
    if action in {"stop", "restart"}:
        command += ["-m", mode]
    subprocess.run(as_postgres_user(command), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def remove_postgres(record: dict) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        pg_ctl(record, "stop", mode="immediate")
    shutil.rmtree(record["root"], ignore_errors=True)


def start_redis() -> tuple[str, dict]:
    server = shutil.which("redis-server")
    if not server:
        sys.exit(f"services: Redis is not running and redis-server is not installed.\n{INSTALL_HINT}")
    port = 6379 if not port_open("127.0.0.1", 6379) else free_port()
    root = Path(tempfile.mkdtemp(prefix="backoffice-test-redis-"))
    pidfile = root / "redis.pid"
    subprocess.run(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(root), "--logfile", str(root / "redis.log")],
        check=True,
    )  # fmt: skip
    for _ in range(50):
        if redis_answers("127.0.0.1", port):
            break
        time.sleep(0.1)
    else:
        sys.exit(f"services: redis-server did not answer on port {port}; see {root / 'redis.log'}")
    log(f"started a throwaway Redis on port {port}")
    return f"redis://127.0.0.1:{port}/15", {"kind": "redis", "pidfile": str(pidfile), "root": str(root)}


def up() -> None:
    started: list[dict] = []
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith(("postgres://", "postgresql://")):
        sys.exit(f"services: the tests need PostgreSQL, but DATABASE_URL is {database_url.split(':', 1)[0]}://...")
    if postgres_answers(database_url):
        log(f"using PostgreSQL at {urlsplit(database_url).hostname}:{urlsplit(database_url).port or 5432}")
    elif os.environ.get("DATABASE_URL"):
        sys.exit("services: DATABASE_URL is set, but that PostgreSQL server does not accept the login.")
    else:
        database_url, record = start_postgres()
        started.append(record)

    broker_url = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    parts = urlsplit(broker_url)
    if not broker_url.startswith("redis://"):
        sys.exit("services: the tests need Redis, but CELERY_BROKER_URL is not a redis:// URL.")
    if os.environ.get("CELERY_BROKER_URL") or redis_answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        log(f"using Redis at {parts.hostname}:{parts.port or 6379}{parts.path}")
    else:
        broker_url, record = start_redis()
        started.append(record)

    STATE.write_text(json.dumps(started))
    print(f"export DATABASE_URL={shlex.quote(database_url)}")
    print(f"export CELERY_BROKER_URL={shlex.quote(broker_url)}")


def down() -> None:
    if not STATE.exists():
        return
    for record in json.loads(STATE.read_text()):
        if record["kind"] == "postgres":
            remove_postgres(record)
        elif record["kind"] == "redis":
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(Path(record["pidfile"]).read_text()), 15)
            shutil.rmtree(record["root"], ignore_errors=True)
        log(f"stopped the throwaway {record['kind']}")
    STATE.unlink()


if __name__ == "__main__":
    if sys.argv[1:] == ["up"]:
        up()
    elif sys.argv[1:] == ["down"]:
        down()
    else:
        sys.exit("usage: services.py up|down")
