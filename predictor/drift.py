"""Live drift of the models this replica serves: a sliding window of the rows it predicts online
per model, compared with the version's training reference (shared/drift.py) at each scrape.

The window belongs to a model version: a swap starts an empty one against the new version's
reference. PSI is exported only once the window holds `min_rows` rows, so a quiet hour after a
promotion does not raise a drift alert from a dozen rows.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from predictor.cache import Served
from shared.drift import Columns, Window

log = logging.getLogger(__name__)


class DriftMonitor(Collector):
    def __init__(self, window: int = 5000, min_rows: int = 500) -> None:
        self.window = window
        self.min_rows = min_rows
        self._windows: dict[str, tuple[int, Window]] = {}
        self._lock = threading.Lock()
        self._warned: set[tuple[str, int]] = set()

    def observe(self, served: Served, columns: Columns) -> None:
        """Count the rows `served` just predicted (column by column: a DataFrame or a dict of
        lists) in its version's window. Never raises: drift is worth less than the prediction
        it watches."""
        if served.drift is None:
            return
        try:
            self._window_for(served).observe(columns)
        except Exception as exc:
            key = (served.name, served.version)
            if key not in self._warned:  # once per version, not once per batch
                self._warned.add(key)
                log.warning("drift of %s v%d not counted: %s", *key, exc)

    def psi(self, name: str) -> dict[str, float]:
        """The PSI per feature of `name`'s version in its window (empty before any row)."""
        found = self._windows.get(name)
        return {} if found is None else found[1].psi()

    def rows(self, name: str) -> int:
        found = self._windows.get(name)
        return 0 if found is None else found[1].rows

    def forget(self, name: str) -> None:
        """Drop the window of a model no longer served (its series stop being exported)."""
        with self._lock:
            self._windows = {k: v for k, v in self._windows.items() if k != name}

    def _window_for(self, served: Served) -> Window:
        found = self._windows.get(served.name)
        if found is not None and found[0] == served.version:
            return found[1]
        assert served.drift is not None
        with self._lock:
            found = self._windows.get(served.name)
            if found is None or found[0] != served.version:
                found = (served.version, Window(served.drift, self.window))
                self._windows = {**self._windows, served.name: found}
            return found[1]

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from _families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        psi, rows = _families()
        for name, (version, window) in self._windows.items():
            rows.add_metric([name, str(version)], window.rows)
            if window.rows < self.min_rows:
                continue
            for feature, value in window.psi().items():
                if not math.isnan(value):
                    psi.add_metric([name, str(version), feature], value)
        yield from (psi, rows)


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    psi = GaugeMetricFamily(
        "streamops_feature_psi",
        "Population stability index of each feature over the live window against the training "
        "reference of the version in service (exported once the window holds min_rows rows)",
        labels=["model", "version", "feature"],
    )
    rows = GaugeMetricFamily(
        "streamops_drift_window_rows",
        "Live rows in the drift window of the version in service",
        labels=["model", "version"],
    )
    return psi, rows
