"""The shipped alerts and dashboard: promtool checks and unit-tests the rules, and every metric they use exists."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import PROJECT_ROOT
from tests.support.promtool import promtool
from tests.support.servers import HttpSession, WebProcess

PROMETHEUS = PROJECT_ROOT / "monitoring" / "prometheus"
DASHBOARDS = PROJECT_ROOT / "monitoring" / "grafana" / "dashboards"
RULES = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
RULE_TESTS = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
ALERTS = {rule["alert"]: rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule}
RECORDED = {rule["record"] for group in RULES["groups"] for rule in group["rules"] if "record" in rule}

# What issue 17 asks the shipped alerts to cover, and the alert that does.
REQUIRED = {
    "queue depth above a threshold for 5 minutes, high_priority": "QueueBacklogHighPriority",
    "queue depth above a threshold for 5 minutes, default": "QueueBacklogDefault",
    "queue depth above a threshold for 5 minutes, low_priority": "QueueBacklogLowPriority",
    "no worker consuming a queue": "QueueWithoutWorker",
    "beat heartbeat stale": "BeatHeartbeatStale",
    "a schedule late": "ScheduleLate",
    "the failure rate of a task above its usual level": "TaskFailureRateHigh",
    "orders stuck unfinished": "OrdersStuck",
    "emails unsent past their deadline": "EmailsPastDeadline",
}

# PromQL words that are not metric names: functions and aggregations (always followed by a
# parenthesis, handled below), keywords and modifiers.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded series) names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\b[a-z_]+\s*\(", "(", text)  # functions and aggregations
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?", " ", text)  # numbers, durations
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text)) - PROMQL_WORDS


def dashboard_expressions() -> list[str]:
    expressions = []
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            expressions += [target["expr"] for target in panel.get("targets", [])]
    return expressions


def exported_names(text: str) -> set[str]:
    """Every name in an exposition: each family (with or without samples yet) and each sample's
    (counters' _total, histograms' _bucket, _sum and _count)."""
    families = list(text_string_to_metric_families(text))
    return {family.name for family in families} | {sample.name for family in families for sample in family.samples}


def test_promtool_finds_the_rules_valid() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_runs_the_rules_unit_tests() -> None:
    result = promtool("test", "rules", str(PROMETHEUS / "alerts.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_makes_it_fire_and_one_that_keeps_it_quiet() -> None:
    cases = [case for test in RULE_TESTS["tests"] for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert set(ALERTS) == fires
    assert set(ALERTS) == quiet


def test_the_alerts_the_issue_asks_for_are_there_with_a_severity_and_a_summary() -> None:
    for wanted, name in REQUIRED.items():
        assert name in ALERTS, wanted
    for name, rule in ALERTS.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert ALERTS["QueueBacklogHighPriority"]["for"] == "5m"


def test_the_prometheus_config_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    token = tmp_path / "metrics_token"
    token.write_text("a-token")
    for job in config["scrape_configs"]:
        assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token", job["job_name"]
        job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


@pytest.mark.django_db
def test_every_metric_the_alerts_and_the_dashboard_use_is_exported(admin_client) -> None:
    from ops import worker_metrics

    exported = exported_names(admin_client.get("/metrics").content.decode())
    # The worker's own metric objects, with one sample each so that every series name shows.
    with tempfile.TemporaryDirectory() as directory:
        metrics = worker_metrics.WorkerMetrics(directory)
    metrics.tasks.labels(task="t", outcome="failed").inc()
    metrics.failures.labels(task="t", exception="ValueError").inc()
    metrics.duration.labels(task="t").observe(0.1)
    registry = CollectorRegistry(auto_describe=False)
    for collector in (metrics.tasks, metrics.failures, metrics.duration, worker_metrics.RunningTasks()):
        registry.register(collector)
    exported |= exported_names(generate_latest(registry).decode())
    known = exported | RECORDED | {"up"}  # Prometheus adds `up` for every target it scrapes

    rule_expressions = [rule["expr"] for group in RULES["groups"] for rule in group["rules"]]
    used = {name for expr in rule_expressions + dashboard_expressions() for name in metric_names(expr)}
    assert used - known == set()
    assert {"backoffice_schedule_late", "backoffice_worker_task_duration_seconds_bucket"} <= used


def test_the_name_extraction_sees_through_promql() -> None:
    expr = (
        'sum by (task, le) (rate(a_bucket{x="y{z}"}[5m])) / on(task) group_left(q) b:c:rate5m > 0.05 + 2 * d offset 1h'
    )
    assert metric_names(expr) == {"a_bucket", "b:c:rate5m", "d"}


def test_the_dashboard_queries_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(
        (PROJECT_ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
        for essential in ("queue", "runs per second", "run time", "failures by type", "beat", "schedules"):
            assert essential in titles, essential
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_promtool_check_metrics_passes_on_the_live_web_metrics(web_env) -> None:
    """Lints the exposition of a real gunicorn: names, units, help texts, counter suffixes."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    PeriodicTask.objects.create(
        name="Sweep",
        task="orders.tasks.check_pending_orders",
        interval=IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS),
    )
    with WebProcess({**web_env, "METRICS_TOKEN": "lint-token"}) as web:
        web.wait_ready()
        response = HttpSession(web.base_url).request("GET", "/metrics", headers={"Authorization": "Bearer lint-token"})
    assert response.status == 200
    text = response.body.decode()
    assert "backoffice_schedule_late{" in text
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, with Grafana's range variables filled in."""
    grafana_variables = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "15s"}
    rules = []
    for number, expr in enumerate(dashboard_expressions()):
        for variable, value in grafana_variables.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rules) >= 15
