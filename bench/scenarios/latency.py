"""3. Enqueue latency: POST /api/orders/ under 8 concurrent clients, against GET /api/me/ on the same server.

Both endpoints go through the same gunicorn, session, CSRF and database; the
difference is what placing an order costs: validation, one transaction, and
the publish to the broker after commit. No worker runs, so the queue just grows.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import sys
import time
from http.cookies import SimpleCookie

from bench.harness import flush_broker, log, median, ratio, reset_tables, wait_until
from bench.processes import Process, free_port
from bench.scenarios.pipeline import prepare_catalogue

CLIENTS = 8
# gunicorn's recommended (2 x cores) + 1 sync workers; compose reads WEB_CONCURRENCY the same way.
WEB_WORKERS = 2 * (os.cpu_count() or 1) + 1


class Web(Process):
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(WEB_WORKERS),
            "--access-logfile",
            "-",
        ]
        super().__init__(args, env, "web")

    def wait_ready(self) -> Web:
        def answers() -> bool:
            try:
                return request(self.port, "GET", "/health/live", {})[0] == 200
            except OSError:
                return False

        wait_until(answers, 60, "gunicorn to answer")
        return self


def request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes, list]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.getheaders()
    finally:
        connection.close()


def client_headers(port: int, session_key: str) -> dict[str, str]:
    """Cookies and the CSRF header for one logged-in customer; the CSRF cookie comes from the server."""
    _, _, headers = request(port, "GET", "/accounts/login/", {})
    cookies = SimpleCookie()
    for name, value in headers:
        if name.lower() == "set-cookie":
            cookies.load(value)
    token = cookies["csrftoken"].value
    return {
        "Cookie": f"sessionid={session_key}; csrftoken={token}",
        "X-CSRFToken": token,
        "Content-Type": "application/json",
    }


def sessions(count: int) -> list[str]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    users = get_user_model()
    keys = []
    for index in range(count):
        user, _ = users.objects.get_or_create(username=f"latency{index}", defaults={"email": f"l{index}@example.com"})
        client = Client()
        client.force_login(user)
        keys.append(client.cookies[settings.SESSION_COOKIE_NAME].value)
    return keys


def _client(
    port: int, headers: dict, method: str, path: str, body: bytes | None, count: int, go: object, out: object
) -> None:
    go.wait()  # type: ignore[attr-defined]
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        status, payload, _ = request(port, method, path, headers, body)
        timings.append(time.perf_counter() - started)
        if status not in (200, 202):
            out.put(("error", f"{method} {path} answered {status}: {payload[:200]!r}"))  # type: ignore[attr-defined]
            return
    out.put(("ok", timings))  # type: ignore[attr-defined]


def burst(port: int, all_headers: list[dict], method: str, path: str, body: bytes | None, count: int) -> list[float]:
    """CLIENTS processes each send `count` requests back to back, all starting together; every latency."""
    context = multiprocessing.get_context("fork")
    go, out = context.Event(), context.Queue()
    workers = [
        context.Process(target=_client, args=(port, headers, method, path, body, count, go, out))
        for headers in all_headers
    ]
    for worker in workers:
        worker.start()
    go.set()
    timings: list[float] = []
    for _ in workers:
        kind, value = out.get(timeout=600)
        if kind == "error":
            raise AssertionError(value)
        timings.extend(value)
    for worker in workers:
        worker.join()
    return timings


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(env: dict[str, str], quick: bool) -> dict:
    per_client, rounds = (40, 2) if quick else (150, 5)
    reset_tables("orders.Order", "orders.OrderLine", "django_celery_results.TaskResult")
    flush_broker()
    _, skus = prepare_catalogue(CLIENTS * per_client * rounds * 2)
    keys = sessions(CLIENTS)
    web = Web(env).start()
    try:
        web.wait_ready()
        headers = [client_headers(web.port, key) for key in keys]
        order = json.dumps({"lines": [{"sku": skus[0], "quantity": 1}, {"sku": skus[1], "quantity": 2}]}).encode()
        endpoints = {"GET /api/me/": ("GET", "/api/me/", None), "POST /api/orders/": ("POST", "/api/orders/", order)}
        for method, path, body in endpoints.values():  # warm up every gunicorn worker
            burst(web.port, headers, method, path, body, 5)
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name in endpoints}
        for index in range(rounds):
            names = list(endpoints) if index % 2 == 0 else list(reversed(endpoints))
            for name in names:
                timings = burst(web.port, headers, *endpoints[name], per_client)
                measured[name].append((percentile(timings, 0.5) * 1000, percentile(timings, 0.99) * 1000))
            log(
                f"latency round {index + 1}/{rounds}: "
                + ", ".join(
                    f"{name} p50 {values[-1][0]:.1f} ms p99 {values[-1][1]:.1f} ms" for name, values in measured.items()
                )
            )
    finally:
        web.stop()
        flush_broker()
    base, post = measured["GET /api/me/"], measured["POST /api/orders/"]
    p50_ratios = [p[0] / b[0] for p, b in zip(post, base, strict=True)]
    p99_ratios = [p[1] / b[1] for p, b in zip(post, base, strict=True)]
    return {
        "name": "Enqueue latency",
        "what": f"{CLIENTS} concurrent clients, {per_client} requests each per round, gunicorn with {WEB_WORKERS} workers",
        "unit": "ms",
        "post_p50_ms": round(median([p[0] for p in post]), 2),
        "post_p99_ms": round(median([p[1] for p in post]), 2),
        "baseline_p50_ms": round(median([b[0] for b in base]), 2),
        "baseline_p99_ms": round(median([b[1] for b in base]), 2),
        "p50_ratio_rounds": [round(r, 2) for r in p50_ratios],
        "p99_ratio_rounds": [round(r, 2) for r in p99_ratios],
        "p50_ratio": ratio(median(p50_ratios)),
        "p99_ratio": ratio(median(p99_ratios)),
    }
