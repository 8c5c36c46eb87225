"""The retrain rules' verdicts from the prediction log and the labels: decay when production's
last labelled rows fall outside the gate, nothing on too few rows or inside it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from shared import labels, predlog
from shared.datasets import GateSpec, RetrainSpec
from shared.events import Label, LabelsArrived, PredictionsLogged
from trainer.retrain import decay_verdict

GATE = GateSpec(minimum={"accuracy": 0.7})


def _labelled(root: Path, right: int, wrong: int) -> None:
    count = right + wrong
    event = PredictionsLogged(
        model_name="m",
        model_version=4,
        latency_ms=1.0,
        requests=[(f"r{i}", 1) for i in range(count)],
        features=None,
        predictions=[1] * count,
        probabilities=[[0.3, 0.7]] * count,
        classes=[0, 1],
    )
    logged = predlog.online_table([(event, "1-0")])
    truth = [1] * right + [0] * wrong
    arrived = LabelsArrived(
        model_name="m",
        labels=[Label(request_id=f"r{i}", label=v) for i, v in enumerate(truth)],
    )
    table = labels.label_table([(arrived, "2-0")])
    matched, _ = labels.join(table, logged)
    day = datetime.now(UTC).date()
    predlog.write_part(labels.joined_part(root, "m", day, "2-0", "2-0"), matched)


def test_decay_is_live_quality_outside_the_gate_on_enough_labelled_rows(tmp_path: Path) -> None:
    rule = RetrainSpec(decay=True, decay_rows=50)
    _labelled(tmp_path, right=30, wrong=30)  # accuracy 0.5
    verdict = decay_verdict(tmp_path, "m", 4, GATE, rule)
    assert verdict is not None
    assert verdict.reason == "decay"
    assert verdict.evidence["rows"] == 50
    assert verdict.evidence["accuracy"] < 0.7
    assert decay_verdict(tmp_path, "m", 3, GATE, rule) is None  # another version: no labels
    assert decay_verdict(tmp_path, "m", 4, GATE, RetrainSpec(decay=True, decay_rows=100)) is None
    assert decay_verdict(tmp_path, "m", 4, GATE, RetrainSpec(decay=False)) is None


def test_no_decay_inside_the_gate(tmp_path: Path) -> None:
    _labelled(tmp_path, right=90, wrong=10)
    assert decay_verdict(tmp_path, "m", 4, GATE, RetrainSpec(decay=True, decay_rows=50)) is None
