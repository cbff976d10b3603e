#!/usr/bin/env python3
"""Find or start the PostgreSQL, Redis and RabbitMQ servers that the test suite talks to.

`services.py up` prints shell `export` lines for DATABASE_URL and
CELERY_BROKER_URL (Redis); `up --rabbitmq` adds TEST_RABBITMQ_URL, for the
RabbitMQ pass of bin/test. It uses the URLs already in the environment when they answer,
then the localhost defaults, and otherwise starts throwaway servers from the
installed binaries under a temporary folder. It keeps the record of the
throwaway servers it started in a file of this run's own, and prints its path as
TEST_SERVICES_STATE; `services.py down`, in the shell that evaluated those lines,
stops those servers and no other run's. `services.py vhost NAME`, in that shell,
prints TEST_RABBITMQ_URL on a vhost of that name, made when missing (bin/bench's).
Only the standard library is used, so it runs before any virtualenv exists.
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

# The environment variable that names this run's record of the throwaway servers it started.
STATE_VARIABLE = "TEST_SERVICES_STATE"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/backoffice"
# A database number of its own, so the suite never touches a local app's queues.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/15"
# bin/test runs the broker tests a second time on RabbitMQ: on this URL when it is set
# (a vhost of its own keeps parallel runs apart), else on the default vhost "/".
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"

INSTALL_HINT = (
    "Install them with your package manager, for example on Debian or Ubuntu:\n"
    "    sudo apt-get install postgresql redis-server rabbitmq-server\n"
    "or on macOS: brew install postgresql redis rabbitmq\n"
    "or point DATABASE_URL, CELERY_BROKER_URL and TEST_RABBITMQ_URL at servers you already have."
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
        psql,
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
        "-d",
        "postgres",
        "-Atc",
        "select 1",
    ]
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
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--dir",
            str(root),
            "--logfile",
            str(root / "redis.log"),
        ],
        check=True,
    )
    for _ in range(50):
        if redis_answers("127.0.0.1", port):
            break
        time.sleep(0.1)
    else:
        sys.exit(f"services: redis-server did not answer on port {port}; see {root / 'redis.log'}")
    log(f"started a throwaway Redis on port {port}")
    return f"redis://127.0.0.1:{port}/15", {"kind": "redis", "pidfile": str(pidfile), "root": str(root)}


def amqp_answers(host: str, port: int) -> bool:
    """True when an AMQP 0-9-1 server answers the protocol header with Connection.Start (a method frame)."""
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            sock.settimeout(5)
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


def rabbitmq_server() -> str | None:
    # Debian puts the scripts in /usr/lib/rabbitmq/bin; /usr/sbin/rabbitmq-server is a
    # wrapper that switches to the rabbitmq user, which cannot write our temporary folder.
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(direct) if direct.exists() else shutil.which("rabbitmq-server")


def init_rabbitmq(port: int) -> dict:
    """Start a throwaway RabbitMQ node on `port`, with its data, config and Erlang cookie under a temporary folder.

    Returns the record that start_rabbitmq_node() and stop_rabbitmq() take: starting
    it again with the same record brings back the same node with its queues (the
    fault tests restart it). Takes 10 s or more: the Erlang VM and the node boot.
    """
    root = Path(tempfile.mkdtemp(prefix="backoffice-test-rabbitmq-"))
    (root / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n")
    (root / "rabbitmq-env.conf").write_text("")  # not the system's, which names the system's node
    (root / "enabled_plugins").write_text("[].\n")
    record = {"kind": "rabbitmq", "root": str(root), "port": port, "dist_port": free_port(), "pid": None}
    start_rabbitmq_node(record)
    return record


def start_rabbitmq_node(record: dict, timeout: float = 90) -> None:
    server = rabbitmq_server()
    assert server, "rabbitmq-server is not installed"
    root, port = Path(record["root"]), record["port"]
    env = {
        **os.environ,
        "HOME": str(root),  # the Erlang cookie goes here
        "RABBITMQ_NODENAME": f"backoffice-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(record["dist_port"]),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
        "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    with open(root / "server.out", "ab") as out:
        process = subprocess.Popen([server], env=env, stdout=out, stderr=out, start_new_session=True)
    record["pid"] = process.pid
    deadline = time.monotonic() + timeout
    while not amqp_answers("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_rabbitmq(record)
            raise RuntimeError(f"rabbitmq-server did not answer on port {port}; see {root / 'server.out'}")
        time.sleep(0.3)


def stop_rabbitmq(record: dict, timeout: float = 60) -> None:
    """Stop the node (SIGTERM: a clean shutdown, queues kept on disk) and wait until it is gone."""
    pid = record.get("pid")
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, 15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (services.py down runs in another process)
            finished = 0 if _alive(pid) else pid
        if finished:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, 9)
    record["pid"] = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_rabbitmq() -> tuple[str, dict]:
    if not rabbitmq_server():
        sys.exit(f"services: RabbitMQ is not running and rabbitmq-server is not installed.\n{INSTALL_HINT}")
    port = 5672 if not port_open("127.0.0.1", 5672) else free_port()
    try:
        record = init_rabbitmq(port)
    except RuntimeError as exc:
        sys.exit(f"services: {exc}")
    log(f"started a throwaway RabbitMQ on port {port} ({record['root']})")
    return f"amqp://guest:guest@127.0.0.1:{port}//", record


def _find_or_start(started: list[dict], rabbitmq: bool) -> tuple[str, str, str]:
    """The servers' URLs: the ones that answer, or throwaway servers started here and appended to `started`."""
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
    if broker_url.startswith("amqp://"):
        # The broker tests alone, on RabbitMQ: bin/test -m rabbitmq with CELERY_BROKER_URL=amqp://...
        if not amqp_answers(parts.hostname or "127.0.0.1", parts.port or 5672):
            sys.exit("services: CELERY_BROKER_URL is an amqp:// URL, but no RabbitMQ answers there.")
        log(f"using RabbitMQ at {parts.hostname}:{parts.port or 5672}{parts.path}")
    elif not broker_url.startswith("redis://"):
        sys.exit("services: the tests need Redis or RabbitMQ, but CELERY_BROKER_URL is not a redis:// or amqp:// URL.")
    elif os.environ.get("CELERY_BROKER_URL") or redis_answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        log(f"using Redis at {parts.hostname}:{parts.port or 6379}{parts.path}")
    else:
        broker_url, record = start_redis()
        started.append(record)

    rabbitmq_url = os.environ.get("TEST_RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    if rabbitmq:  # only the whole suite's run needs it: a throwaway node takes 10-40 s to boot
        parts = urlsplit(rabbitmq_url)
        if not rabbitmq_url.startswith("amqp://"):
            sys.exit("services: TEST_RABBITMQ_URL must be an amqp:// URL.")
        if amqp_answers(parts.hostname or "127.0.0.1", parts.port or 5672):
            log(f"using RabbitMQ at {parts.hostname}:{parts.port or 5672}{parts.path}")
        elif os.environ.get("TEST_RABBITMQ_URL"):
            sys.exit("services: TEST_RABBITMQ_URL is set, but no RabbitMQ answers there.")
        else:
            rabbitmq_url, record = start_rabbitmq()
            started.append(record)
    return database_url, broker_url, rabbitmq_url


def up(rabbitmq: bool = False) -> None:
    started: list[dict] = []
    try:
        database_url, broker_url, rabbitmq_url = _find_or_start(started, rabbitmq)
    except BaseException:  # a check failed (sys.exit) or a server would not start: stop what this run started
        stop(started)
        raise

    # A file of this run's own: parallel runs (bin/test twice, bin/test beside bin/bench) each stop only theirs.
    # Written even when empty, so that a down never reads a record named by an outer run's environment.
    descriptor, state = tempfile.mkstemp(prefix=f"backoffice-test-services-{os.getuid()}-", suffix=".json")
    with os.fdopen(descriptor, "w") as file:
        json.dump(started, file)
    print(f"export {STATE_VARIABLE}={shlex.quote(state)}")
    print(f"export DATABASE_URL={shlex.quote(database_url)}")
    print(f"export CELERY_BROKER_URL={shlex.quote(broker_url)}")
    if rabbitmq:
        print(f"export TEST_RABBITMQ_URL={shlex.quote(rabbitmq_url)}")


def rabbitmqctl_command(port: int, records: list[dict]) -> tuple[list[str], dict[str, str]]:
    """rabbitmqctl and its environment for the RabbitMQ on `port`: a throwaway node among `records`, else the machine's."""
    for record in records:
        if record.get("kind") == "rabbitmq" and record.get("port") == port:
            # Its node name, and its Erlang cookie under HOME, as start_rabbitmq_node gives them.
            ctl = str(Path(rabbitmq_server() or "rabbitmqctl").with_name("rabbitmqctl"))
            return [ctl, "-n", f"backoffice-test-{port}@localhost"], {**os.environ, "HOME": record["root"]}
    return ["rabbitmqctl"], dict(os.environ)


def vhost(name: str) -> None:
    """Print TEST_RABBITMQ_URL on a vhost `name` of its own, made (and opened to the URL's user) when missing.

    For bin/bench, whose RabbitMQ half purges the project's queues where it runs:
    on a vhost of its own it leaves a test run's queues alone, as its Redis half
    keeps to a database number of its own. Needs rabbitmqctl (root, or the rabbitmq
    user, for the machine's node); exits 1 saying why when it cannot.
    """
    url = os.environ.get("TEST_RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    parts = urlsplit(url)
    command, env = rabbitmqctl_command(parts.port or 5672, started_servers())
    user = parts.username or "guest"
    for args in (["add_vhost", name], ["set_permissions", "-p", name, user, ".*", ".*", ".*"]):
        try:
            done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            sys.exit(f"services: rabbitmqctl {args[0]} failed: {exc}")
        if done.returncode != 0:
            sys.exit(f"services: rabbitmqctl {args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    print(parts._replace(path=f"/{name}").geturl())


def run_state() -> Path | None:
    """This run's record of its throwaway servers, named by the `up` lines this environment holds; None without one.

    None also when up failed before writing it, or down already removed it.
    """
    name = os.environ.get(STATE_VARIABLE)
    return Path(name) if name and Path(name).is_file() else None


def started_servers() -> list[dict]:
    """The throwaway servers this run's `up` started (the tests read a RabbitMQ node's name and cookie here)."""
    state = run_state()
    return json.loads(state.read_text()) if state else []


def down() -> None:
    """Stop the throwaway servers of this run (TEST_SERVICES_STATE), and no other run's."""
    stop(started_servers())
    state = run_state()
    if state is not None:
        state.unlink()


def stop(records: list[dict]) -> None:
    for record in records:
        if record["kind"] == "postgres":
            remove_postgres(record)
        elif record["kind"] == "redis":
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(Path(record["pidfile"]).read_text()), 15)
            shutil.rmtree(record["root"], ignore_errors=True)
        elif record["kind"] == "rabbitmq":
            stop_rabbitmq(record)
            shutil.rmtree(record["root"], ignore_errors=True)
        log(f"stopped the throwaway {record['kind']}")


if __name__ == "__main__":
    if sys.argv[1:] == ["up"]:
        up()
    elif sys.argv[1:] == ["up", "--rabbitmq"]:
        up(rabbitmq=True)
    elif sys.argv[1:] == ["down"]:
        down()
    elif len(sys.argv) == 3 and sys.argv[1] == "vhost":
        vhost(sys.argv[2])
    else:
        sys.exit("usage: services.py up [--rabbitmq] | down | vhost NAME")
