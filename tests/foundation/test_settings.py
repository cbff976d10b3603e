"""Settings come from the environment; bad values stop start-up and name the variable."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import PROJECT_ROOT

CONTRACT_VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "TIME_ZONE")


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The process environment without any project settings, plus the given values."""
    env = {key: value for key, value in os.environ.items() if key not in (*CONTRACT_VARIABLES, "EMAIL_URL")}
    env["DATA_DIR"] = str(tmp_path)
    env["EMAIL_URL"] = "console://"  # required with DEBUG off; test_email_url_is_required_* leaves it out
    env.update(values)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"DATABASE_URL": "postgres://user@db:notaport/shop"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://user@db/shop"}, "DATABASE_URL"),
        ({"DEBUG": "0"}, "SECRET_KEY"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"TIME_ZONE": "Mars/Olympus_Mons"}, "TIME_ZONE"),
        ({"SHOP_CURRENCY": "EURO"}, "SHOP_CURRENCY"),
        ({"SHOP_LOCALE": "xx_YY"}, "SHOP_LOCALE"),
        ({"EMAIL_URL": "pigeon://coop"}, "EMAIL_URL"),
        ({"CELERY_BROKER_URL": "sqs://key:secret@"}, "CELERY_BROKER_URL"),
        ({"DATABASE_CONN_MAX_AGE": "forever"}, "DATABASE_CONN_MAX_AGE"),
        ({"SCHEDULE_GRACE": "a while"}, "SCHEDULE_GRACE"),
        ({"WORKER_PING_MAX_AGE": "-5s"}, "WORKER_PING_MAX_AGE"),
        ({"EMAIL_SEND_DEADLINE": "soon"}, "EMAIL_SEND_DEADLINE"),
        ({"WORKER_METRICS_PORT": "70000"}, "WORKER_METRICS_PORT"),
        ({"WORKER_METRICS_PORT": "http"}, "WORKER_METRICS_PORT"),
        ({"WORKER_METRICS_PORT": "9808", "WORKER_METRICS_HOST": "10.0.0.5"}, "WORKER_METRICS_HOST"),  # no token
        ({"PROVIDER_TIMEOUT": "5m"}, "PROVIDER_TIMEOUT"),  # longer than the order's lease (2m)
        ({"PROVIDER_TIMEOUT": "0s"}, "PROVIDER_TIMEOUT"),
    ],
)
def test_it_refuses_to_start_with_a_bad_value_and_names_the_variable(
    tmp_path: Path, values: dict[str, str], named: str
) -> None:
    env = clean_env(tmp_path, **values)
    if named != "SECRET_KEY":
        env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))

    result = manage(env, "check")

    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line
    assert named in last_line


def test_email_url_is_required_when_debug_is_off_and_optional_with_debug_on(tmp_path: Path) -> None:
    env = clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(50))
    del env["EMAIL_URL"]

    refused = manage(env, "check")
    debugging = manage({**env, "DEBUG": "1"}, "check")

    assert refused.returncode != 0
    assert "EMAIL_URL is required when DEBUG is off" in refused.stderr.strip().splitlines()[-1]
    assert debugging.returncode == 0, debugging.stderr


def test_it_runs_with_embedded_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    result = manage(clean_env(tmp_path, DEBUG="1"), "describe_setup")

    assert result.returncode == 0, result.stderr
    assert f"SQLite at {tmp_path / 'db.sqlite3'}" in result.stdout
    assert "embedded file broker" in result.stdout


def test_debug_is_off_unless_turned_on(tmp_path: Path) -> None:
    script = "from django.conf import settings; print(settings.DEBUG)"
    env = clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(50), DJANGO_SETTINGS_MODULE="config.settings")
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "False", result.stderr


def test_check_deploy_is_clean_with_the_production_env_example(tmp_path: Path) -> None:
    example = {}
    for line in (PROJECT_ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    # The example leaves the secret empty on purpose; an operator generates one.
    assert example["SECRET_KEY"] == ""
    example["SECRET_KEY"] = secrets.token_urlsafe(50)
    env = clean_env(tmp_path, **example)

    result = manage(env, "check", "--deploy", "--fail-level", "DEBUG")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_sandbox_providers_old_dotted_paths_still_name_them(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        DEBUG="1",
        PAYMENT_GATEWAY="orders.sandbox.SandboxGateway",
        SHIPPING_CARRIER="orders.sandbox.SandboxCarrier",
    )
    script = "from orders.providers import carrier, payment_gateway; print(type(payment_gateway()).__module__, type(carrier()).__name__)"
    out = manage(env, "shell", "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == ["sandbox.providers", "SandboxCarrier"]


@pytest.mark.parametrize("scheme", ["amqp", "amqps"])
def test_it_accepts_a_rabbitmq_url_and_declares_quorum_queues_with_publisher_confirms(
    tmp_path: Path, scheme: str
) -> None:
    env = clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(50), CELERY_BROKER_URL=f"{scheme}://u:p@mq:5672/shop")
    script = (
        "import json; from config import celery_app as app; c = app.conf; print(json.dumps({"
        "'queues': {q.name: [q.exchange.type, q.queue_arguments] for q in c.task_queues},"
        "'options': c.broker_transport_options, 'detect': c.worker_detect_quorum_queues,"
        "'delayed': c.broker_native_delayed_delivery_queue_type, 'transport': app.connection().transport_cls}))"
    )

    result = manage(env, "shell", "-c", script)

    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(conf["queues"]) == {"high_priority", "default", "low_priority"}
    for exchange_type, arguments in conf["queues"].values():
        # Native delayed delivery routes through topic exchanges only.
        assert exchange_type == "topic"
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-delivery-limit"] > 1
    assert conf["options"] == {"confirm_publish": True, "confirm_timeout": 5}
    assert conf["detect"] is True
    assert conf["delayed"] == "quorum"
    # py-amqp with a bound on the wait for a confirm (ops/broker_amqp.py); TLS for amqps.
    assert conf["transport"] == {"amqp": "ops.broker_amqp:Transport", "amqps": "ops.broker_amqp:SSLTransport"}[scheme]
