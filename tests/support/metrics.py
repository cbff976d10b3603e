"""Reading the web's /metrics answer in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(client) -> dict[str, dict[tuple, float]]:
    """{metric name: {sorted label items: value}} from a /metrics answer."""
    text = client.get("/metrics").content.decode()
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found
