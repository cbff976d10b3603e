"""Measure the product's hot paths against baselines taken in the same run (make bench).

    python -m bench [--quick] [--only floor pipeline pipeline_latency latency campaign reports beat] [--output PATH]
    python -m bench --configurations [--quick]   # the worker configurations tried, as a table

Every figure is a median of several rounds and a ratio to a baseline measured
side by side on the same machine. Needs DATABASE_URL and CELERY_BROKER_URL
(bin/bench sets them the way the tests do); it works in a database and a Redis
database number of its own.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from bench import harness, processes

SCENARIOS = ("floor", "pipeline", "pipeline_latency", "latency", "campaign", "reports", "beat")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller N and fewer rounds: within about 3 minutes.")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="Run only these scenarios.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT}).")
    parser.add_argument(
        "--configurations",
        action="store_true",
        help="Instead of the scenarios: the pipeline on each worker configuration tried, at 0 and 150 ms.",
    )
    options = parser.parse_args(argv)

    harness.exit_on_sigterm()
    env = harness.prepare_environment()
    if options.configurations:
        import json

        from bench import configurations

        rows = configurations.run(env, options.quick)
        out = options.output.with_name("configurations.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n")
        print(configurations.table(rows))
        print(f"\nJSON: {out}")
        return 0
    from django.db import close_old_connections

    from bench import report
    from bench.scenarios import beat, campaign, floor, latency, pipeline, pipeline_latency, reports

    modules = {
        "floor": floor,
        "pipeline": pipeline,
        "pipeline_latency": pipeline_latency,
        "latency": latency,
        "campaign": campaign,
        "reports": reports,
        "beat": beat,
    }
    results: dict[str, dict] = {}
    failed = False
    for name in options.only or SCENARIOS:
        harness.log(f"--- {name} ---")
        close_old_connections()  # a scenario that failed may have left a broken connection behind
        try:
            results[name] = modules[name].run(env, options.quick)
        except Exception as exc:  # a failed or timed-out round is reported, never hidden
            failed = True
            traceback.print_exc()
            results[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    doc = report.document(results, quick=options.quick, smtp_server=processes.smtp_server_name())
    report.write(doc, options.output)
    print(report.table(doc))
    print(f"\nJSON: {options.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
