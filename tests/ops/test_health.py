"""Health checks and metrics against real processes: a worker and a beat that the test stops."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils.timezone import now

from ops import runs
from ops.models import BeatHeartbeat
from tests.factories import UserFactory, staff_with
from tests.support.processes import PROJECT_ROOT, BeatProcess, WorkerProcess, wait_for
from tests.support.servers import HttpSession, WebProcess, own_broker_server

pytestmark = pytest.mark.django_db(transaction=True)


TOKEN = "health-test-token"


def health(client: Client) -> tuple[int, dict]:
    """/health/ with METRICS_TOKEN, so the answer carries every part's details."""
    response = client.get("/health/", headers={"Authorization": f"Bearer {TOKEN}"})
    return response.status_code, response.json()


def wait_for_status(client: Client, status: int, timeout: float, message: str) -> dict:
    """Poll /health/ until it answers `status`; on timeout the failure shows the last body."""
    seen: list[dict] = []

    def answered() -> bool:
        code, body = health(client)
        seen[:] = [body]
        return code == status

    try:
        wait_for(answered, timeout, 0.3, message)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last /health/ body: {seen}") from None
    return seen[0]


def test_liveness_answers_without_touching_anything(client, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_readiness_is_200_with_everything_up_and_503_naming_a_stopped_worker_or_beat(
    process_env, broker, celery_app, settings
) -> None:
    # Beat ticks at least every 5 s (django-celery-beat's max interval), so a
    # live beat's heartbeat is never older than that plus a little.
    settings.BEAT_HEARTBEAT_MAX_AGE = timedelta(seconds=8)
    settings.METRICS_TOKEN = TOKEN
    client = Client()
    worker = WorkerProcess(process_env).start()
    beat = BeatProcess(process_env).start()
    try:
        worker.wait_ready(celery_app)
        body = wait_for_status(client, 200, 30, "everything to be healthy")
        assert body["status"] == "ok" and body["failing"] == []
        assert body["checks"]["workers"]["online"] == [worker.nodename]
        assert set(body["checks"]["broker"]["queues"]) == {"high_priority", "default", "low_priority"}

        worker.stop()
        # The workers' last answer is reused for WORKER_PING_MAX_AGE, then asked again.
        body = wait_for_status(client, 503, 30, "the stopped worker to be missed")
        assert body["failing"] == ["workers"]
        assert "no worker answered" in body["checks"]["workers"]["detail"]

        worker = WorkerProcess(process_env).start().wait_ready(celery_app)
        wait_for_status(client, 200, 30, "the new worker")
        beat.stop()
        body = wait_for_status(client, 503, 30, "beat's heartbeat to go stale")
        assert body["failing"] == ["beat"]
        assert "heartbeat is" in body["checks"]["beat"]["detail"]
    finally:
        worker.stop()
        beat.stop()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_health_and_metrics_reuse_a_recent_answer_of_the_workers_instead_of_pinging_on_every_call(
    client, staff, worker, settings
) -> None:
    from ops.models import RecentAnswer

    settings.WORKER_PING_MAX_AGE = timedelta(minutes=5)
    settings.METRICS_TOKEN = TOKEN
    first = health(client)[1]["checks"]["workers"]
    asked_at = RecentAnswer.objects.get(key="workers").asked_at
    client.force_login(staff)
    for _ in range(3):
        client.get("/metrics")
    again = health(client)[1]["checks"]["workers"]
    assert RecentAnswer.objects.get(key="workers").asked_at == asked_at  # nobody broadcast again
    assert first["online"] == again["online"] == [worker.nodename]
    assert again["age_seconds"] >= first["age_seconds"]
    assert again["queues"] == {"high_priority": 1, "default": 1, "low_priority": 1}

    settings.WORKER_PING_MAX_AGE = timedelta(0)
    health(client)
    assert RecentAnswer.objects.get(key="workers").asked_at > asked_at


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_readiness_names_the_broker_when_it_is_down(web_env) -> None:
    with own_broker_server() as broker_server:
        env = {**web_env, "CELERY_BROKER_URL": broker_server.url, "METRICS_TOKEN": TOKEN}
        with WebProcess(env) as web:
            web.wait_ready()
            broker_server.stop()
            session = HttpSession(web.base_url)
            detailed = session.request("GET", "/health/", headers={"Authorization": f"Bearer {TOKEN}"})
            anonymous = session.request("GET", "/health/")
    assert detailed.status == anonymous.status == 503
    body = detailed.json()
    assert "broker" in body["failing"] and "workers" in body["failing"]
    assert body["checks"]["broker"]["ok"] is False
    assert anonymous.json() == {"status": "unhealthy", "failing": body["failing"], "warnings": body["warnings"]}
    assert "127.0.0.1" not in anonymous.body.decode(), "the broker's address is in the raw error text"


def test_metrics_refuse_anonymous_and_wrong_tokens(client, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_metrics_accept_the_token_or_a_session_with_the_operations_permission(
    client, staff, customer, settings
) -> None:
    settings.METRICS_TOKEN = "s3cret-token"
    by_token = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert by_token.status_code == 200
    assert by_token["Content-Type"].startswith("text/plain")
    client.force_login(customer)
    assert client.get("/metrics").status_code == 403
    client.force_login(UserFactory(is_staff=True))
    assert client.get("/metrics").status_code == 403, "staff status alone is not enough"
    client.force_login(staff_with("ops.view_operations"))
    assert b"backoffice_queue_depth" in client.get("/metrics").content


def test_anonymous_callers_get_the_status_and_the_names_of_failing_parts_only(client, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-token"
    BeatHeartbeat.objects.create(node="secret-host:4242", role="leader", started_at=now(), seen_at=now())

    anonymous = client.get("/health/").json()
    by_token = client.get("/health/", headers={"Authorization": "Bearer s3cret-token"}).json()
    client.force_login(UserFactory(is_staff=True))
    plain_staff = client.get("/health/").json()
    client.force_login(staff_with("ops.view_operations"))
    operator = client.get("/health/").json()

    assert set(anonymous) == set(plain_staff) == {"status", "failing", "warnings"}
    assert "workers" in anonymous["failing"]  # no worker runs here
    assert "secret-host" not in json.dumps(anonymous)
    for detailed in (by_token, operator):
        assert detailed["checks"]["beat"]["leader"] == "secret-host:4242"
        assert set(detailed["checks"]["broker"]["queues"]) == {"high_priority", "default", "low_priority"}


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_metric_counts_move_after_tasks_run(client, staff, start_worker_process) -> None:
    start_worker_process()
    client.force_login(staff)

    def successes() -> float:
        text = client.get("/metrics").content.decode()
        found = re.search(
            r'backoffice_task_results\{state="SUCCESS",task="orders.tasks.check_pending_orders"\} ([0-9.e+]+)', text
        ) or re.search(
            r'backoffice_task_results\{task="orders.tasks.check_pending_orders",state="SUCCESS"\} ([0-9.e+]+)', text
        )
        return float(found.group(1)) if found else 0.0

    before = successes()
    text = client.get("/metrics").content.decode()
    assert "backoffice_workers_online 1.0" in text, [
        line for line in text.splitlines() if "online" in line or "up{" in line
    ]
    for _ in range(3):
        runs.run_task("orders.tasks.check_pending_orders", [], {}, user=staff)
    wait_for(lambda: successes() >= before + 3, 30, 0.3, "the metric to count the runs")
    time.sleep(0)


@pytest.mark.rabbitmq
def test_queue_depth_metric_and_health_read_the_waiting_messages_from_the_broker(client, settings, broker) -> None:
    from config import celery_app

    settings.METRICS_TOKEN = TOKEN
    for _ in range(2):
        celery_app.send_task("reports.tasks.generate_daily_report")

    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).content.decode()
    depths = dict(re.findall(r'backoffice_queue_depth\{queue="(\w+)"\} ([0-9.]+)', text))
    assert depths == {"high_priority": "0.0", "default": "0.0", "low_priority": "2.0"}
    assert health(client)[1]["checks"]["broker"]["queues"] == {"high_priority": 0, "default": 0, "low_priority": 2}


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_back_to_back_pings_all_find_the_worker(worker) -> None:
    """Kombu drops replies to a second ping on a reused connection; every ping must see the worker."""
    from ops import health as checks

    assert [checks.workers().data["online"] for _ in range(3)] == [[worker.nodename]] * 3


@pytest.mark.slow
def test_on_the_embedded_file_broker_every_ping_finds_the_live_worker(process_env, tmp_path) -> None:
    """The file broker is polled, so replies come late; `make run`'s health must not call its worker dead."""
    env = {**process_env, "CELERY_BROKER_URL": "filesystem://", "DATA_DIR": str(tmp_path)}
    with WorkerProcess(env) as worker:
        worker.wait_started()
        checks = subprocess.run(
            [sys.executable, "-c", PING_TEN_TIMES],
            env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    assert json.loads(checks.stdout.splitlines()[-1]) == [[worker.nodename]] * 10, checks.stderr[-2000:]


# A ping takes about as long as the worker's poll, so back-to-back pings all land at
# the same point of it; pauses of 0 to 0.9 s try every point.
PING_TEN_TIMES = """
import json, time, django
django.setup()
from ops import health
found = []
for tenths in range(10):
    time.sleep(tenths / 10)
    found.append(health.workers().data["online"])
print(json.dumps(found))
"""
