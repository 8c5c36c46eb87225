"""The rollout guard's judgement (docs/rollout.md), free of Redis and the registry: what a
version answered (a Tally), and the checks of a new version against the one it replaces.

- errors: the share of the new version's rows that failed (answered 502), over
  `max_error_rate`;
- latency: its p99 predict time per batch, over `max_p99_ratio` times the old version's p99
  and over `p99_floor_ms` (so that a 2 ms model going to 5 ms is no breach);
  a first version, with nothing before it, is judged on errors and live quality only;
- prediction_shift: the PSI of its predictions (labels; or values, in the old version's
  deciles) against the old version's, over `max_prediction_psi`;
- live_quality: a gate metric on its labelled rows outside the gate's bounds, once it has
  `min_labelled_rows` of them.

The first three wait for `min_rows` rows of each side; a check with too little evidence is
not failed, it is not judged yet.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.datasets import GateSpec, RolloutSpec
from shared.drift import decile_psi, psi
from shared.events import GuardBreach, PredictionsLogged

# What a tally keeps of a version's recent answers: enough for a p99 and a distribution.
KEPT_BATCHES = 5_000
# Batches on each side before their p99s are compared.
MIN_BATCHES = 100


@dataclass
class Tally:
    """What one version answered: rows and failed rows, and its latest batches (bounded), each
    with when it was taken in, its predict time and its predictions."""

    rows: int = 0
    failed: int = 0
    batches: deque[tuple[float, float, tuple[Any, ...]]] = field(
        default_factory=lambda: deque(maxlen=KEPT_BATCHES)
    )
    failures: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=KEPT_BATCHES))
    classifier: bool | None = None  # None until the first entry says

    def add(self, entry: PredictionsLogged, at: float = 0.0) -> None:
        self.add_batch(at, entry.latency_ms, entry.predictions, entry.classes is not None)

    def add_batch(
        self, at: float, latency_ms: float, said: Sequence[Any], classifier: bool
    ) -> None:
        """One batch's answers, as the prediction log keeps them (labels, or values)."""
        self.rows += len(said)
        self.classifier = classifier
        values = map(str, said) if classifier else map(_number, said)
        self.batches.append((at, latency_ms, tuple(values)))

    def add_failed(self, rows: int, at: float = 0.0) -> None:
        self.failed += rows
        self.failures.append((at, rows))

    @property
    def predictions(self) -> list[Any]:
        return [p for _, _, said in self.batches for p in said]

    def p99(self) -> float:
        return float(np.percentile([latency for _, latency, _ in self.batches], 99))

    def since(self, when: float) -> Tally:
        """What it took in from `when` on (as far as it still holds it): a baseline of the
        same recent traffic, not of whatever came before."""
        batches = [b for b in self.batches if b[0] >= when]
        failures = [f for f in self.failures if f[0] >= when]
        return Tally(
            sum(len(said) for _, _, said in batches),
            sum(rows for _, rows in failures),
            deque(batches, maxlen=KEPT_BATCHES),
            deque(failures, maxlen=KEPT_BATCHES),
            self.classifier,
        )


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def prediction_psi(new: Tally, old: Tally) -> float:
    """PSI of the new version's predictions against the old one's: over the labels both gave
    (classifiers), or over the old version's deciles (regressors)."""
    said_before, said_now = old.predictions, new.predictions
    if new.classifier or old.classifier:
        labels = sorted(set(said_before) | set(said_now))
        before, after = Counter(said_before), Counter(said_now)
        shares = np.array([before[label] for label in labels], float) / len(said_before)
        return psi(shares.tolist(), np.array([after[label] for label in labels], float))
    return decile_psi(np.asarray(said_before, float), np.asarray(said_now, float))


def judge(
    new: Tally,
    old: Tally | None,
    rule: RolloutSpec,
    *,
    quality: dict[str, float] | None = None,
    gate: GateSpec | None = None,
) -> list[GuardBreach]:
    """The checks `new` fails against `old` (None: nothing to compare with, only the absolute
    bounds); `quality`: the live figures of its labelled rows, judged by `gate`."""
    breaches = []
    answered = new.rows + new.failed
    if answered >= rule.min_rows and new.failed / answered > rule.max_error_rate:
        breaches.append(
            GuardBreach(
                check="errors",
                value=new.failed / answered,
                threshold=rule.max_error_rate,
                detail=f"{new.failed} of {answered} rows failed",
            )
        )
    compared = old is not None and old.rows >= rule.min_rows
    # A p99 of fewer batches is their maximum: one slow batch, not a slow version.
    timed = compared and old is not None and min(len(old.batches), len(new.batches)) >= MIN_BATCHES
    if timed and old is not None and new.rows >= rule.min_rows:
        before = old.p99()
        limit = max(rule.max_p99_ratio * before, rule.p99_floor_ms)
        p99 = new.p99()
        if p99 > limit:
            breaches.append(
                GuardBreach(
                    check="latency",
                    value=p99,
                    threshold=limit,
                    detail=f"p99 predict ms per batch, against {before:.1f} before",
                )
            )
    if compared and old is not None and new.rows >= rule.min_rows:
        shift = prediction_psi(new, old)
        if shift > rule.max_prediction_psi:
            breaches.append(
                GuardBreach(
                    check="prediction_shift",
                    value=shift,
                    threshold=rule.max_prediction_psi,
                    detail=f"PSI of {new.rows} predictions against {old.rows} of the old version",
                )
            )
    if quality is not None and gate is not None:
        breaches.extend(_quality(quality, gate, rule))
    return breaches


def _quality(figures: dict[str, float], gate: GateSpec, rule: RolloutSpec) -> list[GuardBreach]:
    rows = figures.get("rows", 0.0)
    if rows < rule.min_labelled_rows:
        return []
    found = []
    for metric, value in figures.items():
        low, high = gate.minimum.get(metric), gate.maximum.get(metric)
        bound = low if low is not None and value < low else None
        bound = high if high is not None and value > high else bound
        if bound is not None:
            found.append(
                GuardBreach(
                    check="live_quality",
                    value=value,
                    threshold=bound,
                    detail=f"live {metric} on {rows:.0f} labelled rows, outside the gate",
                )
            )
    return found


def summary(breaches: list[GuardBreach] | tuple[GuardBreach, ...]) -> str:
    """`check value > threshold; ...`, for a tag and a log line."""
    return "; ".join(f"{b.check} {b.value:.4g} vs {b.threshold:.4g}" for b in breaches)
