"""A Redis that refuses writes counts as the broker unavailable; any other Redis error reply stays a bug.

Kombu wraps every error reply of Redis in OperationalError, an outage and a
refusal alike; core/dispatch.py tells them apart (broker_refused). Each case is a
redis-server of the test's own, put into the state in which it refuses (or, for
the bug, with a queue's key of the wrong type), and the error is the one Celery
raises when it publishes there.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
import redis
from django.test import RequestFactory

from config import celery_app
from core import dispatch, unavailable
from tests.support.processes import PROJECT_ROOT, wait_for
from tests.support.servers import FULL_AT_4MB, RedisServer

pytestmark = pytest.mark.only_on_broker("redis")  # these are Redis's own error replies

SWEEP = "orders.tasks.check_pending_orders"  # routed to the queue "default"


def full(servers: ExitStack) -> str:
    server = servers.enter_context(RedisServer(FULL_AT_4MB))
    server.fill()
    return server.url


def read_only_replica(servers: ExitStack) -> str:
    master = servers.enter_context(RedisServer())
    return servers.enter_context(RedisServer(["--replicaof", "127.0.0.1", str(master.port)])).url


def without_its_replicas(servers: ExitStack) -> str:
    return servers.enter_context(RedisServer(["--min-replicas-to-write", "1"])).url


def failing_to_save(servers: ExitStack) -> str:
    server = servers.enter_context(RedisServer(["--save", "3600 1"]))
    client = redis.Redis.from_url(server.url)
    servers.callback(client.config_set, "save", "")  # else the server, stopped, saves, fails and stays up
    shutil.rmtree(server.dir)  # the snapshot has nowhere to go
    client.bgsave()
    wait_for(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err", 10, 0.05, "the snapshot to fail")
    return server.url


def denied_by_its_acl(servers: ExitStack) -> str:
    server = servers.enter_context(RedisServer())
    redis.Redis.from_url(server.url).acl_setuser("default", enabled=True, nopass=True, reset_keys=True, keys=["%R~*"])
    return server.url


def running_a_long_script(servers: ExitStack) -> str:
    server = servers.enter_context(RedisServer(["--busy-reply-threshold", "50"]))
    client = redis.Redis.from_url(server.url)

    def loop_until_killed() -> None:
        with contextlib.suppress(redis.ResponseError):  # SCRIPT KILL ends it with an error reply
            redis.Redis.from_url(server.url).eval("while true do end", 0)

    script = threading.Thread(target=loop_until_killed)
    script.start()
    servers.callback(script.join, 10)
    servers.callback(client.script_kill)
    wait_for(lambda: busy(client), 10, 0.05, "Redis to answer BUSY")
    return server.url


def busy(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY ")
    return False


def with_a_queue_key_of_the_wrong_type(servers: ExitStack) -> str:
    server = servers.enter_context(RedisServer())
    redis.Redis.from_url(server.url).set("default", "a string where Kombu keeps the queue's list")
    return server.url


@contextmanager
def redis_that_is(state: Callable[[ExitStack], str]) -> Iterator[str]:
    with ExitStack() as servers:
        yield state(servers)


REFUSALS = {
    "OOM": full,
    "READONLY": read_only_replica,
    "NOREPLICAS": without_its_replicas,
    "MISCONF": failing_to_save,
    "NOPERM": denied_by_its_acl,
    "BUSY": running_a_long_script,
}


def published_to(url: str) -> Exception:
    """What Celery raises when it publishes the sweep to the Redis at `url`."""
    try:
        with celery_app.connection_for_write(url) as conn:
            celery_app.send_task(SWEEP, connection=conn)
    except Exception as exc:  # whatever it is: it is what the senders get
        return exc
    raise AssertionError(f"Redis at {url} took the message")


def answer_to(exc: Exception, path: str) -> int:
    """The status web answers when a view raises `exc`; 500 when the middleware leaves it to Django."""
    response = unavailable.OutageMiddleware(lambda request: None).process_exception(RequestFactory().post(path), exc)  # type: ignore[arg-type,return-value]
    return 500 if response is None else response.status_code


def sent_by_dispatch(env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
    """core.dispatch.send of the sweep, in a process of its own whose broker is the Redis at `url`."""
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", f"from core import dispatch; print(dispatch.send({SWEEP!r}))"],
        cwd=PROJECT_ROOT,
        env={**env, "CELERY_BROKER_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("state", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_publish_redis_refuses_is_the_broker_unavailable(
    process_env: dict[str, str], state: Callable[[ExitStack], str]
) -> None:
    with redis_that_is(state) as url:
        refused = published_to(url)
        sent = sent_by_dispatch(process_env, url)

    reply = refused.__cause__
    assert isinstance(refused, dispatch.OperationalError) and isinstance(reply, redis.ResponseError), repr(refused)
    assert dispatch.broker_refused(refused), f"{reply!r} is not a refusal"
    assert [answer_to(refused, "/api/orders/"), answer_to(refused, "/orders/")] == [503, 503]
    # The sender logs it and goes on; the row stays for its sweep.
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert sent.stdout.split()[-1:] == ["False"], sent.stdout + sent.stderr[-3000:]
    assert f"broker unavailable, {SWEEP}[] not sent" in sent.stderr


def test_any_other_redis_error_reply_is_a_bug_raised_as_one_and_a_500(process_env: dict[str, str]) -> None:
    with redis_that_is(with_a_queue_key_of_the_wrong_type) as url:
        error = published_to(url)
        sent = sent_by_dispatch(process_env, url)

    assert "WRONGTYPE" in str(error.__cause__), repr(error)
    assert not dispatch.broker_refused(error)
    assert [answer_to(error, "/api/orders/"), answer_to(error, "/orders/")] == [500, 500]
    assert sent.returncode != 0, sent.stdout
    assert "WRONGTYPE Operation against a key holding the wrong kind of value" in sent.stderr
    assert "broker unavailable" not in sent.stderr


def test_a_redis_that_answers_nothing_is_an_outage_not_a_hang(process_env: dict[str, str]) -> None:
    # Stopped, it keeps its port: connections open and commands go out, and no reply
    # ever comes (as from a machine gone without closing its sockets). Without a
    # socket timeout, the send below waited for ever.
    with RedisServer() as server:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            sent = sent_by_dispatch(process_env, server.url)
        finally:
            server.process.send_signal(signal.SIGCONT)

    assert sent.returncode == 0, sent.stderr[-3000:]
    assert sent.stdout.split()[-1:] == ["False"], sent.stdout + sent.stderr[-3000:]
    assert f"broker unavailable, {SWEEP}[] not sent" in sent.stderr
    assert "Timeout reading from socket" in sent.stderr
