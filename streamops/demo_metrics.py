"""The demo's last step: what the services' own /metrics say about everything that happened."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

# (service, series, the labels that tell its samples apart): what an operator would look at
# first, in the order the story went.
SHOWN = (
    ("ingestor", "streamops_ingested_rows_total", ("dataset", "outcome")),
    ("ingestor", "streamops_ingest_batches_total", ("outcome", "kind")),
    ("trainer", "streamops_trainings_total", ("outcome",)),
    ("trainer", "streamops_gate_verdicts_total", ("verdict",)),
    ("predictor", "streamops_model_version_in_service", ("model",)),
    ("predictor", "streamops_model_loads_total", ("trigger", "outcome")),
    ("predictor", "streamops_predicted_rows_total", ("path",)),
    ("predictor", "streamops_drift_window_rows", ("model", "version")),
    ("gateway", "streamops_http_requests_total", ("route", "status")),
    ("gateway", "streamops_dead_letters", ("stream",)),
)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def show_metrics(console: Console, endpoints: dict[str, str]) -> bool:
    """Scrape every endpoint once and print the series in SHOWN; False when one is missing."""
    scraped: dict[str, dict[str, list[tuple[dict[str, str], float]]]] = {}
    with httpx.Client(timeout=10) as http:
        for service, url in endpoints.items():
            scraped[service] = samples(http.get(url).text)
    table = Table("service", "series", "labels", "value")
    for column in table.columns[1:3]:
        column.overflow = "fold"  # whole names, even on a narrow terminal
    complete = True
    for service, name, labels in SHOWN:
        found = scraped.get(service, {}).get(name, [])
        complete = complete and bool(found)
        if name == "streamops_dead_letters":  # one per stream: only those with letters
            found = [(ls, v) for ls, v in found if v] or [({"stream": "(none)"}, 0.0)]
        for sample_labels, value in found:
            shown = ", ".join(f"{k}={sample_labels.get(k, '')}" for k in labels)
            table.add_row(service, name, shown, f"{value:g}")
    console.print(table)
    return complete
