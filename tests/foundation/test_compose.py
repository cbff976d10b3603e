"""docker-compose.yml cannot be run here (no Docker engine), so check what it points at.

Every command and health check of the app services must name modules, entry points,
management commands and queues that really exist in this project.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands

from tests.support.processes import PROJECT_ROOT

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, service in SERVICES.items() if service.get("image") == "backoffice:latest"]
QUEUES = {queue.name for queue in settings.CELERY_TASK_QUEUES}
WORKERS = {"worker-high": "high_priority", "worker-default": "default", "worker-low": "low_priority"}


def example_env() -> dict[str, str]:
    values = {}
    for line in (PROJECT_ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def commands_in(text: str | list[str]) -> list[list[str]]:
    """Split a compose command (or CMD-SHELL health check) into the simple commands it runs."""
    words = text if isinstance(text, list) else shlex.split(text)
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;", words[2])]
    return [words]


def check_command(words: list[str]) -> None:
    if words[0] == "exec":
        words = words[1:]
    if words[0] in {"test", "kill"}:
        return  # shell built-ins in health checks; nothing project-specific to check
    program, *args = words
    if program == "python" and args[0] == "manage.py":
        assert args[1] in get_commands(), f"manage.py has no command {args[1]!r}"
    elif program == "python" and args[0] == "-c":
        compile(args[1], "<healthcheck>", "exec")
    elif program == "python":
        assert (PROJECT_ROOT / args[0]).is_file(), f"{args[0]} does not exist"
    elif program == "gunicorn":
        if args[0] == "-c":
            assert (PROJECT_ROOT / args[1]).is_file(), f"{args[1]} does not exist"
            args = args[2:]
        module, _, attribute = args[0].partition(":")
        assert hasattr(importlib.import_module(module), attribute), f"{args[0]} does not exist"
    elif program == "celery":
        assert args[:2] == ["-A", "config"], "every celery command must load the project app"
        subcommand = args[2]
        if subcommand == "beat":
            scheduler = args[args.index("-S") + 1]
            schedulers = {ep.name for ep in entry_points(group="celery.beat_schedulers")}
            assert scheduler in schedulers, f"no beat scheduler named {scheduler!r}"
        elif subcommand == "flower":
            assert "flower" in {ep.name for ep in entry_points(group="celery.commands")}
        elif subcommand == "worker":
            assert set(args[args.index("-Q") + 1].split(",")) <= QUEUES
        else:
            assert subcommand == "inspect", f"unexpected celery subcommand {subcommand!r}"
    else:
        pytest.fail(f"unknown program {program!r} in docker-compose.yml")


def test_it_has_every_process_of_the_stack() -> None:
    assert {"postgres", "redis", "web", "beat", "flower", "mailpit", *WORKERS} <= set(SERVICES)
    assert set(APP_SERVICES) == {"web", "beat", "flower", *WORKERS}
    assert (PROJECT_ROOT / SERVICES["web"]["build"]).resolve() == PROJECT_ROOT


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_app_command_points_at_something_that_exists(name: str) -> None:
    for words in commands_in(SERVICES[name]["command"]):
        check_command(words)


@pytest.mark.parametrize("name", [*APP_SERVICES, "postgres", "redis", "mailpit"])
def test_every_service_has_a_health_check_that_points_at_something_that_exists(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    if name in APP_SERVICES:
        for words in commands_in(test[1:] if test[0] == "CMD" else test[1]):
            check_command(words)


@pytest.mark.parametrize(("name", "queue"), WORKERS.items())
def test_each_queue_class_has_its_own_worker_whose_health_check_asks_whether_it_takes_work(
    name: str, queue: str
) -> None:
    words = shlex.split(SERVICES[name]["command"])
    assert words[words.index("-Q") + 1] == queue
    nodename = words[words.index("-n") + 1]
    assert nodename.endswith("@%h")
    # Not `celery inspect ping`: a worker can answer pings and take no work.
    health = SERVICES[name]["healthcheck"]["test"][1]
    assert health == f"python manage.py worker_status {nodename.split('@')[0]}@$$HOSTNAME"


# Issue 19: each queue class gets the pool that fits its work (README "Worker pools").
SHIPPED_POOLS = {"worker-high": "threads", "worker-default": "threads", "worker-low": "prefork"}


def worker_options(command: str) -> dict[str, str]:
    words = shlex.split(command)
    return {flag: words[words.index(flag) + 1] for flag in ("-Q", "-P", "-c", "-n")}


@pytest.mark.parametrize(("name", "pool"), SHIPPED_POOLS.items())
def test_each_queue_class_runs_on_the_pool_that_fits_its_work_with_the_reason_beside_it(name: str, pool: str) -> None:
    options = worker_options(SERVICES[name]["command"])
    assert options["-P"] == pool
    assert int(options["-c"]) >= (8 if pool == "threads" else 1)
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    block = text[text.index(f"  {name}:") :].split("command:")[0]
    assert "bound" in block, f"say why {name} runs {pool} in a comment above its command"


def test_make_run_starts_the_workers_compose_ships_for_each_queue_class() -> None:
    procfile = {
        name: command
        for name, _, command in (
            line.partition(": ") for line in (PROJECT_ROOT / "Procfile.dev").read_text().splitlines()
        )
        if not name.startswith("#")
    }
    orders, low = worker_options(procfile["worker"]), worker_options(procfile["worker-low"])
    default = worker_options(SERVICES["worker-default"]["command"])
    assert set(orders["-Q"].split(",")) == {"default", "high_priority"}
    assert (orders["-P"], orders["-c"]) == (default["-P"], default["-c"])
    assert {key: low[key] for key in ("-Q", "-P", "-c")} == {
        key: value for key, value in worker_options(SERVICES["worker-low"]["command"]).items() if key != "-n"
    }


def test_every_app_process_is_started_again_when_it_exits() -> None:
    for name in [*APP_SERVICES, "postgres", "redis"]:
        assert SERVICES[name]["restart"] == "unless-stopped", name


@pytest.mark.parametrize("name", WORKERS)
def test_workers_get_their_soft_shutdown_time_before_docker_kills_them(name: str) -> None:
    service = SERVICES[name]
    soft_timeout = int(example_env()["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"])
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert service["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert soft_timeout < grace <= soft_timeout + 10


def test_there_is_exactly_one_beat_reading_schedules_from_the_database() -> None:
    beats = [name for name in APP_SERVICES if " beat " in f" {SERVICES[name]['command']} "]
    assert beats == ["beat"]
    assert "-S django" in SERVICES["beat"]["command"]
    assert "deploy" not in SERVICES["beat"] or SERVICES["beat"]["deploy"].get("replicas", 1) == 1


def test_the_broker_does_not_silently_lose_queued_work() -> None:
    command = SERVICES["redis"]["command"]
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in SERVICES["redis"]["volumes"])


def test_postgres_keeps_its_data_in_a_volume() -> None:
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in SERVICES["postgres"]["volumes"])


def test_app_services_wait_for_healthy_dependencies() -> None:
    web = SERVICES["web"]["depends_on"]
    assert web["postgres"]["condition"] == web["redis"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        if name != "web":
            assert SERVICES[name]["depends_on"]["web"]["condition"] == "service_healthy"


def test_compose_needs_an_email_url_and_the_example_names_mailpit() -> None:
    environment = SERVICES["worker-high"]["environment"]
    assert environment["EMAIL_URL"].startswith("${EMAIL_URL:?")
    assert example_env()["EMAIL_URL"] == "smtp://mailpit:1025"


def test_web_flower_and_mailpit_are_published_on_this_machine_only() -> None:
    for name in ("web", "flower", "mailpit"):
        assert SERVICES[name]["ports"], name
    for name, service in SERVICES.items():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), name


def test_mailpit_asks_for_a_login_and_flower_runs_read_only() -> None:
    assert SERVICES["mailpit"]["environment"]["MP_UI_AUTH"].startswith("${MAILPIT_UI_AUTH:?")
    assert "--read_only" in shlex.split(SERVICES["flower"]["command"])
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_web_migrates_installs_the_schedules_and_roles_then_serves_with_gunicorn() -> None:
    steps = commands_in(SERVICES["web"]["command"])
    assert steps[0][:3] == ["python", "manage.py", "migrate"]
    assert steps[1] == ["python", "manage.py", "setup_schedules"]
    assert steps[2] == ["python", "manage.py", "setup_roles"]
    assert steps[-1][:2] == ["exec", "gunicorn"]


def test_health_checks_fit_each_process() -> None:
    assert SERVICES["web"]["healthcheck"]["test"] == ["CMD", "python", "bin/healthcheck-http", "/health/live"]
    assert SERVICES["beat"]["healthcheck"]["test"] == ["CMD", "python", "manage.py", "beat_status"]


def test_every_variable_compose_needs_is_in_the_committed_example_and_env_is_not_committed() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    optional = set(re.findall(r"\$\{([A-Z_]+):-", text))
    assert required <= set(example_env())
    example_text = (PROJECT_ROOT / ".env.example").read_text()
    assert all(name in example_text for name in optional), "document optional variables in .env.example"
    assert all(service.get("env_file") == ".env" for name, service in SERVICES.items() if name in APP_SERVICES)
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    assert not Path(PROJECT_ROOT / ".env").exists() or ".env" not in _tracked_files()


def _tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return result.stdout.splitlines()


# --- the monitoring profile: docker compose --profile monitoring up -------------------------------

MONITORING = {name for name, service in SERVICES.items() if "monitoring" in service.get("profiles", [])}
RABBITMQ = {name for name, service in SERVICES.items() if "rabbitmq" in service.get("profiles", [])}


def bind_mounts(name: str) -> dict[str, str]:
    """{path in the container: path in the repository} of a service's ./ mounts (which must exist)."""
    mounts = {}
    for volume in SERVICES[name].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (PROJECT_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            mounts[target] = source
    return mounts


def test_the_monitoring_profile_adds_prometheus_and_grafana_and_nothing_else_needs_it() -> None:
    assert {"prometheus", "grafana"} == MONITORING
    profiled = MONITORING | RABBITMQ
    assert all("profiles" not in service for name, service in SERVICES.items() if name not in profiled)


def test_prometheus_and_grafana_listen_on_localhost_only_and_refuse_to_start_without_a_password() -> None:
    for name in MONITORING:
        assert SERVICES[name]["ports"], name
        assert all(port.startswith("127.0.0.1:") for port in SERVICES[name]["ports"]), name
    prometheus = " ".join(SERVICES["prometheus"]["command"])
    assert 'test -n "$$PROMETHEUS_PASSWORD_HASH" || {' in prometheus
    assert "basic_auth_users" in prometheus and "--web.config.file=/prometheus/web.yml" in prometheus
    grafana = SERVICES["grafana"]
    assert 'test -n "$$GF_SECURITY_ADMIN_PASSWORD" || {' in " ".join(grafana["command"])
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert (
        grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"]
        == grafana["environment"]["GF_USERS_ALLOW_SIGN_UP"]
        == "false"
    )


def test_prometheus_loads_the_rules_and_scrapes_web_and_every_worker_with_the_metrics_token() -> None:
    mounts = bind_mounts("prometheus")
    assert "--config.file=/etc/prometheus/prometheus.yml" in " ".join(SERVICES["prometheus"]["command"])
    config = yaml.safe_load((PROJECT_ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    for rule_file in config["rule_files"]:  # relative to the config file
        assert mounts[f"/etc/prometheus/{rule_file}"] == "./monitoring/prometheus/alerts.yml"

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert COMPOSE["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert SERVICES["prometheus"]["secrets"] == ["metrics_token"]
    assert all(job["authorization"]["credentials_file"] == "/run/secrets/metrics_token" for job in jobs.values())
    assert SERVICES["web"]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:?set METRICS_TOKEN in .env}"

    web = jobs["backoffice-web"]
    assert web["static_configs"][0]["targets"] == ["web:8000"] and web["metrics_path"] == "/metrics"
    assert "--bind 0.0.0.0:8000" in SERVICES["web"]["command"]
    assert SERVICES["web"]["environment"]["ALLOWED_HOSTS"].endswith(",web")  # the Host header Prometheus sends

    (workers,) = jobs["backoffice-workers"]["dns_sd_configs"]
    assert set(workers["names"]) == set(WORKERS)
    for name in WORKERS:
        environment = SERVICES[name]["environment"]
        assert int(environment["WORKER_METRICS_PORT"]) == workers["port"]
        assert environment["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - the compose network; not published
        assert "ports" not in SERVICES[name]


def test_grafana_is_provisioned_with_the_dashboard_and_a_datasource_that_logs_in_to_prometheus() -> None:
    mounts = bind_mounts("grafana")
    provisioning = PROJECT_ROOT / mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "backoffice.yml").read_text())["providers"][0]
    dashboards = PROJECT_ROOT / mounts[provider["options"]["path"]]
    assert list(dashboards.glob("*.json"))
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (PROJECT_ROOT / mounts[str(Path(home).parent)] / Path(home).name).is_file()

    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert f"basic_auth_users:\\n  {datasource['basicAuthUser']}:" in " ".join(SERVICES["prometheus"]["command"])
    assert datasource["secureJsonData"]["basicAuthPassword"] == "$PROMETHEUS_PASSWORD"
    assert SERVICES["grafana"]["environment"]["PROMETHEUS_PASSWORD"] == "${PROMETHEUS_PASSWORD:-}"


# --- the rabbitmq profile: docker compose --profile rabbitmq up -----------------------------------


def rabbitmq_start(password: str, broker_url: str) -> subprocess.CompletedProcess[str]:
    """Run the rabbitmq service's start-up check with sh, as its container would, up to starting RabbitMQ."""
    script = SERVICES["rabbitmq"]["command"][0].replace("$$", "$")
    assert script.endswith("exec docker-entrypoint.sh rabbitmq-server")
    script = script.removesuffix("exec docker-entrypoint.sh rabbitmq-server") + "echo rabbitmq-server starts"
    env = {"PATH": os.environ["PATH"], "RABBITMQ_DEFAULT_PASS": password, "CELERY_BROKER_URL": broker_url}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)


def example_rabbitmq_url() -> str:
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    [line] = [line for line in lines if line.startswith("# CELERY_BROKER_URL=amqp://")]
    return line.removeprefix("# CELERY_BROKER_URL=")


def test_the_rabbitmq_profile_adds_rabbitmq_only_and_the_app_follows_the_broker_url_in_env() -> None:
    assert {"rabbitmq"} == RABBITMQ
    assert SERVICES["web"]["environment"]["CELERY_BROKER_URL"] == "${CELERY_BROKER_URL:-redis://redis:6379/0}"
    assert all(
        SERVICES[name]["environment"]["CELERY_BROKER_URL"].startswith("${CELERY_BROKER_URL:-") for name in APP_SERVICES
    )
    # Web (and through it every other app process) waits for a healthy RabbitMQ when the profile is on.
    assert SERVICES["web"]["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}
    assert SERVICES["rabbitmq"]["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert SERVICES["rabbitmq"]["restart"] == "unless-stopped"


def test_rabbitmq_shows_its_management_ui_on_this_machine_only_and_keeps_amqp_inside() -> None:
    rabbitmq = SERVICES["rabbitmq"]
    assert "management" in rabbitmq["image"]
    assert rabbitmq["ports"] == ["127.0.0.1:15672:15672"]
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"] == "${RABBITMQ_PASSWORD:-}"
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"] != "guest"


def test_rabbitmq_keeps_its_quorum_queues_across_container_restarts() -> None:
    rabbitmq = SERVICES["rabbitmq"]
    assert any(volume.endswith(":/var/lib/rabbitmq") for volume in rabbitmq["volumes"])
    assert rabbitmq["hostname"] == "rabbitmq"  # its data directory is named after the node, rabbit@<hostname>


@pytest.mark.parametrize(
    ("password", "broker_url", "said"),
    [
        ("", "amqp://backoffice:pw@rabbitmq:5672/backoffice", "set RABBITMQ_PASSWORD"),
        ("pw", "", "set CELERY_BROKER_URL=amqp://"),
        ("pw", "redis://redis:6379/0", "set CELERY_BROKER_URL=amqp://"),
        ("pw", "amqp://backoffice:pw@elsewhere:5672/backoffice", "set CELERY_BROKER_URL=amqp://"),
    ],
)
def test_rabbitmq_refuses_to_start_without_a_password_or_unless_the_app_uses_it(
    password: str, broker_url: str, said: str
) -> None:
    result = rabbitmq_start(password, broker_url)
    assert result.returncode == 1
    assert said in result.stderr
    assert "rabbitmq-server starts" not in result.stdout


def test_rabbitmq_starts_with_the_example_broker_url_and_the_settings_accept_it() -> None:
    url = example_rabbitmq_url().replace("<RABBITMQ_PASSWORD>", "pw")
    assert "RABBITMQ_PASSWORD" in (PROJECT_ROOT / ".env.example").read_text()

    started = rabbitmq_start("pw", url)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "rabbitmq-server starts"

    env = {**os.environ, "CELERY_BROKER_URL": url}
    script = "import django; django.setup(); from django.conf import settings; print(settings.BROKER_IS_RABBITMQ)"
    checked = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert checked.stdout.strip() == "True", checked.stderr
