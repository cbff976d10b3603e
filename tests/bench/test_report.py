"""The benchmark's verdicts and table: a failed round is reported as such, a missed target as missed."""

from __future__ import annotations

import subprocess
import sys

from bench import report
from bench.harness import median, ratio
from tests.support.processes import PROJECT_ROOT

MEASURED = {
    "floor": {"name": "Celery floor", "median": 200.0},
    "pipeline": {
        "name": "Order pipeline",
        "median": 40.0,
        "tasks_per_order": 2.0,
        "floor": 200.0,
        "efficiency": 0.4,
        "stock_median": 8.0,
        "vs_stock": 5.0,
    },
    "pipeline_latency": {
        "name": "Pipeline at 150 ms",
        "latency_ms": 150,
        "median": 30.0,
        "today_median": 48.0,
        "zero_ms_median": 47.0,
        "ratio": 0.62,
        "zero_ratio": 0.98,
        "rss_ratio": 0.8,
        "shipped_rss_mb": 200.0,
        "today_rss_mb": 250.0,
    },
    "latency": {"name": "Enqueue latency", "error": "RoundFailed: timed out after 600s waiting for gunicorn"},
}


def verdicts(results: dict) -> dict[str, str]:
    return {target.key: target.check(results)[1] for target in report.TARGETS if target.scenario != "campaign"}


def test_a_target_is_met_or_missed_by_its_measured_value() -> None:
    found = verdicts(MEASURED)
    assert found["efficiency"] == "MISSED"  # 0.4 < 0.5
    assert found["ratio"] == "MISSED"  # 0.62 < 0.7 at 150 ms
    assert (found["zero_ratio"], found["rss_ratio"]) == ("met", "met")
    assert found["p50_ratio"] == "not measured"  # the latency scenario failed


def test_the_stock_configuration_is_reported_but_no_longer_a_target() -> None:
    assert "vs_stock" not in {target.key for target in report.TARGETS}
    rows = report.rows(MEASURED)
    assert any(row[1] == "vs the stock configuration (information)" and row[4] == "5.00×" for row in rows)


def test_an_upper_bound_is_met_at_the_limit_and_missed_above_it() -> None:
    assert verdicts({"reports": {"aggregation_ratio": 1.5}})["aggregation_ratio"] == "met"
    assert verdicts({"reports": {"aggregation_ratio": 1.51}})["aggregation_ratio"] == "MISSED"


def test_a_ratio_just_under_its_target_is_reported_and_checked_as_missed_not_rounded_up() -> None:
    efficiency = ratio(median([0.498, 0.492, 0.518]))  # the three rounds of a full run on RabbitMQ

    assert efficiency == 0.498
    assert verdicts({"pipeline": {"efficiency": efficiency}})["efficiency"] == "MISSED"
    [row] = [row for row in report.target_rows({"pipeline": {"efficiency": efficiency}}) if row["value"] is not None]
    assert report.target_line(row).endswith(f"MISSED       {row['target']}: 0.498 (wanted ≥ 0.5)")


def test_a_failed_scenario_shows_in_the_table_with_its_error() -> None:
    rows = report.rows(MEASURED)
    assert rows[-1][:2] == ("Enqueue latency", "FAILED")
    assert "timed out" in rows[-1][2]
    assert any(row[0] == "Order pipeline" and row[4] == "eff. 0.400" for row in rows)


def test_the_command_explains_itself() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert "--quick" in out.stdout and "--only" in out.stdout
