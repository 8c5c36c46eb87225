"""Live quality: each model version judged on the labels that came back, over two sliding
windows (its last `window_rows` labelled rows, and the rows labelled in the last `window_s`),
exported for Prometheus with the gate's bounds beside it.

Classifiers: accuracy, and ROC AUC when the model gives probabilities of two classes and both
appear among the labels. Regressors: RMSE and MAE. Computed from the joined labels
(shared/labels.py) every `interval_s`, and served from that snapshot at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import labels
from shared.datasets import load_spec
from shared.quality import windows

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    quality: dict[tuple[str, int, str, str], float] = field(default_factory=dict)
    rows: dict[tuple[str, int, str], float] = field(default_factory=dict)
    bounds: dict[tuple[str, str, str], float] = field(default_factory=dict)
    # The same for what challengers said of the labelled rows they shadowed.
    shadow_quality: dict[tuple[str, int, str, str], float] = field(default_factory=dict)
    shadow_rows: dict[tuple[str, int, str], float] = field(default_factory=dict)


class QualityCollector(Collector):
    """Serves the latest snapshot: a scrape never reads a file."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return families(self.snapshot)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families with no samples: their names and labels, for the registry."""
        return families(Snapshot())


def families(snap: Snapshot) -> Iterator[GaugeMetricFamily]:
    """The five families, from `snap`."""
    quality = ["model", "version", "metric", "window"]
    rows = ["model", "version", "window"]
    yield _family(
        "streamops_live_quality",
        "Quality of a model version on the labels that came back, per window (rows: its "
        "last labelled rows; time: labelled recently)",
        quality,
        snap.quality,
    )
    yield _family(
        "streamops_live_labelled_rows",
        "Labelled rows behind streamops_live_quality, per window",
        rows,
        snap.rows,
    )
    yield _family(
        "streamops_quality_gate_bound",
        "The quality gate's bounds from the model's dataset spec (bound: minimum, maximum)",
        ["model", "metric", "bound"],
        snap.bounds,
    )
    yield _family(
        "streamops_shadow_live_quality",
        "Quality of a challenger version on the labels of the rows it shadowed, per window "
        "(docs/rollout.md)",
        quality,
        snap.shadow_quality,
    )
    yield _family(
        "streamops_shadow_live_labelled_rows",
        "Labelled shadowed rows behind streamops_shadow_live_quality, per window",
        rows,
        snap.shadow_rows,
    )


def _family(
    name: str, documentation: str, labels: list[str], values: Mapping[tuple[Any, ...], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([str(part) for part in key], value)
    return family


def gate_bounds(datasets_dir: Path) -> dict[tuple[str, str, str], float]:
    """(model, metric, bound) → value, from every spec's training gate."""
    found: dict[tuple[str, str, str], float] = {}
    for spec_file in sorted(datasets_dir.glob("*/spec.yaml")):
        try:
            spec = load_spec(datasets_dir, spec_file.parent.name)
        except Exception as exc:  # a broken spec is the ingestor's to report, not ours
            log.debug("no gate bounds from %s: %s", spec_file, exc)
            continue
        if spec.training is None:
            continue
        model = spec.training.model_name or spec.name
        for metric, value in spec.training.gate.minimum.items():
            found[(model, metric, "minimum")] = value
        for metric, value in spec.training.gate.maximum.items():
            found[(model, metric, "maximum")] = value
    return found


@dataclass
class LiveQuality:
    store_root: Path
    datasets_dir: Path
    collector: QualityCollector
    window_rows: int = 1000
    window_s: float = 3600.0
    interval_s: float = 10.0

    def compute(self, now: datetime | None = None) -> Snapshot:
        now = now or datetime.now(UTC)
        snap = Snapshot(bounds=gate_bounds(self.datasets_dir))
        since = now - timedelta(days=30)  # what the windows can reach, at most
        for model in labels.models(self.store_root):
            for shadow, quality, rows in (
                (False, snap.quality, snap.rows),
                (True, snap.shadow_quality, snap.shadow_rows),
            ):
                joined = labels.read_joined(self.store_root, model, since=since, shadow=shadow)
                found = windows(
                    joined, window_rows=self.window_rows, window_s=self.window_s, now=now
                )
                for (version, window), figures in found.items():
                    rows[(model, version, window)] = figures.pop("rows")
                    for metric, value in figures.items():
                        quality[(model, version, metric, window)] = value
        return snap

    async def run(self) -> None:
        while True:
            try:
                self.collector.snapshot = await anyio.to_thread.run_sync(self.compute)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("computing live quality failed; the last figures stay")
            await asyncio.sleep(self.interval_s)
