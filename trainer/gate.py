"""The quality gate: absolute thresholds, then champion against challenger."""

from __future__ import annotations

from dataclasses import dataclass

from shared.datasets import TrainingSpec
from trainer.training import better


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]


def judge(
    training: TrainingSpec,
    metrics: dict[str, float],
    champion: dict[str, float] | None = None,
    champion_version: int | None = None,
) -> Verdict:
    """Pass when every threshold holds and the model is not worse than the champion (the
    production model, on the same hold-out rows) by more than the margin."""
    failures: list[str] = []
    passes: list[str] = []
    gate = training.gate
    for name, floor in gate.minimum.items():
        value = metrics.get(name)
        if value is None or value < floor:
            failures.append(f"{name} {_show(value)} < minimum {floor}")
        else:
            passes.append(f"{name} {value:.4f} >= {floor}")
    for name, ceiling in gate.maximum.items():
        value = metrics.get(name)
        if value is None or value > ceiling:
            failures.append(f"{name} {_show(value)} > maximum {ceiling}")
        else:
            passes.append(f"{name} {value:.4f} <= {ceiling}")
    metric = training.metric
    if champion is not None and metric in champion:
        new, old = metrics.get(metric), champion[metric]
        where = f"production v{champion_version}" if champion_version else "production"
        if new is None or not better(training.task, metric, new, old, gate.champion_margin):
            failures.append(
                f"{metric} {_show(new)} is worse than {where} ({old:.4f}) by more "
                f"than {gate.champion_margin}"
            )
        else:
            passes.append(
                f"{metric} {new:.4f} vs {where} {old:.4f} (margin {gate.champion_margin})"
            )
    elif champion is None:
        passes.append("no production model to beat")
    return Verdict(not failures, tuple(failures or passes))


def _show(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4f}"
