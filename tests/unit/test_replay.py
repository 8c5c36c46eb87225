"""`streamops replay`: a window of logged rows scored again by another version; agreement and
live metrics checked against a direct computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from shared import labels, predlog
from shared.events import Label, LabelsArrived, PredictionsLogged
from streamops.replay import replay, report

RNG = np.random.default_rng(3)
X = RNG.normal(size=(400, 2))
Y = (X[:, 0] + 0.3 * RNG.normal(size=400) > 0).astype(int)


def test_replay_reports_agreement_and_live_metrics_equal_to_a_direct_computation(
    tmp_path: Path,
) -> None:
    frame = pd.DataFrame(X, columns=["a", "b"])
    production = LogisticRegression().fit(frame[["a"]], Y)  # knows only a
    other = LogisticRegression().fit(frame, Y)
    _write_frames(tmp_path, production, frame)

    def predict(rows: pd.DataFrame) -> Any:
        return other.predict(rows).tolist(), other.predict_proba(rows).tolist(), [0, 1]

    since = datetime.now(UTC) - timedelta(hours=1)
    got = replay(tmp_path, "m", predict, since=since)
    mine, theirs = production.predict(frame[["a"]]), other.predict(frame)
    assert got.rows == 400
    assert got.agreement == np.mean(mine == theirs)
    labelled = np.arange(0, 400, 2)
    assert got.labelled == 200
    assert got.production["accuracy"] == np.mean(mine[labelled] == Y[labelled])
    assert got.replayed["accuracy"] == np.mean(theirs[labelled] == Y[labelled])
    assert "roc_auc" in got.replayed
    lines = report(got, "m", 2)
    assert lines[0] == "m: 400 logged rows replayed with v2"
    assert any(line.startswith("  agreement with production: ") for line in lines)
    nothing = replay(tmp_path, "m", predict, since=datetime.now(UTC) + timedelta(hours=1))
    assert nothing.rows == 0


def _write_frames(root: Path, production: LogisticRegression, frame: pd.DataFrame) -> None:
    said = production.predict(frame[["a"]])
    proba = production.predict_proba(frame[["a"]])
    event = PredictionsLogged(
        model_name="m",
        model_version=1,
        latency_ms=1.0,
        requests=[(f"r{i}", 1) for i in range(400)],
        features={"a": frame["a"].tolist(), "b": frame["b"].tolist()},
        predictions=said.tolist(),
        probabilities=proba.tolist(),
        classes=[0, 1],
    )
    logged = predlog.online_table([(event, "1-0")])
    day = event.occurred_at.date()
    predlog.write_part(predlog.online_part(root, "m", day, "1-0", "1-0"), logged)
    arrived = LabelsArrived(
        model_name="m",
        labels=[Label(request_id=f"r{i}", label=int(Y[i])) for i in range(0, 400, 2)],
    )
    matched, _ = labels.join(labels.label_table([(arrived, "2-0")]), logged)
    predlog.write_part(labels.joined_part(root, "m", day, "2-0", "2-0"), matched)
