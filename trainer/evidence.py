"""Shadow evidence (docs/rollout.md): what a challenger said of the rows production answered,
paired row by row, and whether that is enough to promote it (`rollout.shadow_first`).

Production's answers come first on the `predictions` stream (a replica logs them, then lets
the challenger predict the sampled rows), so they are kept, bounded, until the challenger's
records of the same rows arrive.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.datasets import ShadowGateSpec
from shared.events import PredictionsLogged

# Production answers kept waiting for their challenger's (a few seconds' worth under load).
KEPT_ANSWERS = 50_000


def rows_of(entry: PredictionsLogged) -> Iterator[tuple[tuple[str, int], str]]:
    """((request id, row), prediction as text) of every row of an entry."""
    at = 0
    for request_id, count in entry.requests:
        for row in range(count):
            yield (request_id, row), str(entry.predictions[at])
            at += 1


@dataclass
class Pairing:
    """A challenger's rows against production's: how many were shadowed, how many agreed."""

    rows: int = 0
    agreeing: int = 0
    waiting: OrderedDict[tuple[str, int], str] = field(default_factory=OrderedDict)

    def production(self, entry: PredictionsLogged) -> None:
        for key, said in rows_of(entry):
            self.waiting[key] = said
        while len(self.waiting) > KEPT_ANSWERS:
            self.waiting.popitem(last=False)

    def challenger(self, entry: PredictionsLogged) -> None:
        for key, said in rows_of(entry):
            answered = self.waiting.pop(key, None)
            if answered is not None:
                self.rows += 1
                self.agreeing += answered == said

    @property
    def agreement(self) -> float:
        return self.agreeing / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class Decision:
    """None: not enough evidence yet; else whether to promote, and why in words."""

    promote: bool | None
    said: str


def decide(
    pairing: Pairing,
    gate: ShadowGateSpec,
    *,
    live: tuple[float, float] | None = None,
    metric: str = "",
    higher_is_better: bool = True,
) -> Decision:
    """Promote once `min_rows` were shadowed and the challenger is no worse than production by
    more than the margin: on live quality (`live`: the challenger's and production's `metric`
    on their labelled rows, when both have enough), else on agreement."""
    if pairing.rows < gate.min_rows:
        return Decision(None, f"{pairing.rows} of {gate.min_rows} rows shadowed")
    if live is not None:
        mine, theirs = live
        worse = theirs - mine if higher_is_better else mine - theirs
        said = (
            f"live {metric} {mine:.4g} against production's {theirs:.4g} (margin {gate.margin:g})"
        )
        return Decision(worse <= gate.margin, said)
    floor = 1 - gate.margin
    said = f"agreement {pairing.agreement:.4g} on {pairing.rows} rows (at least {floor:.4g})"
    return Decision(pairing.agreement >= floor, said)
