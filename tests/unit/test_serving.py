"""Which models a replica serves: every registered model in production that its settings let
it serve, found at each converge, dropped when its alias goes; schemas from a dataset spec or
the signature; refusals remembered until a new promotion; and what the replica tells the
gateway (heartbeat details, beaten at once on a change) and `model-loads`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from predictor.cache import ModelCache
from predictor.metrics import PredictorMetrics
from predictor.online import OnlinePredictor
from predictor.replica import Replica
from predictor.service import Predictor
from predictor.specs import SpecReader
from shared.errors import ModelLoadFailed, ModelRefused, NoModelInService
from shared.events import ModelLoaded, ModelPromoted
from shared.model_loading import LoadPolicy
from shared.schema import ModelSchema
from shared.settings import CommonSettings, PredictorSettings
from shared.telemetry import beat
from tests.service.fakes import FakeStatusBoard
from tests.support.catalog import CLOUDPICKLE_PYFUNC, Answers, Catalog, Entry, ab_frame
from tests.support.catalog import ab_signature as signature
from tests.support.toy import TOY_SPEC
from tests.support.waiting import eventually


def _regressor(scale: float = 1.0) -> Entry:
    return Entry(Answers(lambda f: f["a"] * scale), signature())


def _classifier() -> Entry:
    from sklearn.linear_model import LogisticRegression

    frame = ab_frame()
    model = LogisticRegression().fit(frame, frame["a"] > 0)
    return Entry(model, signature(model.predict(frame)))


@pytest.fixture
def catalog() -> Catalog:
    found = Catalog()
    found.add("price", 1, _regressor())
    found.add("churny", 1, _classifier())
    return found


def _predictor(catalog: Catalog, **kwargs: Any) -> Predictor:
    return Predictor(catalog, {}, ModelCache(), **kwargs)


def test_every_model_in_production_is_served_and_new_ones_are_found(catalog: Catalog) -> None:
    predictor = _predictor(catalog)
    assert {s.name for s in predictor.converge()} == {"price", "churny"}
    rows = ab_frame(2)
    assert predictor.predict("price", rows).predictions == rows["a"].tolist()
    assert predictor.predict("churny", rows).probabilities is not None
    catalog.add("late", 3, _regressor(2.0))  # registered while running
    (served,) = predictor.converge()
    assert (served.name, served.version, served.schema.source) == ("late", 3, "signature")
    assert predictor.converge() == []


def test_settings_decide_which_models_a_replica_serves(catalog: Catalog) -> None:
    settings = PredictorSettings(common=CommonSettings(), models=["pri*"])
    predictor = _predictor(catalog, serves=settings.serves)
    assert [s.name for s in predictor.converge()] == ["price"]
    event = ModelPromoted(model_name="churny", version=1, reason="manual")
    assert not predictor.wants(event)


def test_a_model_whose_alias_is_removed_is_dropped(catalog: Catalog) -> None:
    predictor = _predictor(catalog)
    predictor.converge()
    del catalog.production["price"]
    assert predictor.changes().gone == ["price"]
    predictor.converge()
    assert predictor.cache.names() == ("churny",)
    assert predictor.cache.previous("price") is None
    with pytest.raises(NoModelInService):
        predictor.predict("price", ab_frame(1))


def test_a_registry_that_cannot_be_read_drops_nothing(catalog: Catalog) -> None:
    predictor = _predictor(catalog)
    predictor.converge()

    def down() -> dict[str, int]:
        raise ConnectionError("registry down")

    catalog.production_versions = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        predictor.changes()
    assert set(predictor.cache.names()) == {"price", "churny"}


@pytest.mark.parametrize(
    ("entry", "policy", "why"),
    [
        (Entry(Answers(len), None), LoadPolicy(), "no signature"),
        (Entry(Answers(len), signature(), CLOUDPICKLE_PYFUNC), LoadPolicy(), "ALLOW_PICKLE"),
        (_regressor(), LoadPolicy(flavors=("xgboost",)), "not allowed"),
        (Entry(Answers(lambda f: 1 / 0), signature()), LoadPolicy(), "warm-up"),
    ],
    ids=["no signature", "pickle", "flavor", "warm-up"],
)
def test_a_refused_version_is_remembered_until_promoted_again(
    entry: Entry, policy: LoadPolicy, why: str
) -> None:
    catalog = Catalog()
    catalog.add("odd", 4, entry)
    predictor = _predictor(catalog, policy=policy)
    with pytest.raises(ModelRefused, match=why):
        predictor.converge()
    assert predictor.refused("odd") == 4
    assert predictor.stale() == []  # not tried at every converge
    again = ModelPromoted(model_name="odd", version=4, reason="manual")
    with pytest.raises(ModelRefused):
        predictor.promoted(again)  # a new promotion tries it again
    assert predictor.cache.version("odd") is None


def test_a_failure_that_may_pass_is_tried_again_at_the_next_converge() -> None:
    catalog = Catalog()
    catalog.add("flaky", 1, Entry(OSError("artifact store unreachable"), signature()))
    predictor = _predictor(catalog)
    with pytest.raises(ModelLoadFailed, match="unreachable"):
        predictor.converge()
    assert predictor.refused("flaky") is None
    assert predictor.stale() == [("flaky", 1)]


def test_a_model_that_expects_other_columns_than_its_signature_is_refused() -> None:
    from sklearn.linear_model import LinearRegression

    catalog = Catalog()
    fitted = LinearRegression().fit(pd.DataFrame({"x": [0.0, 1.0]}), [0.0, 1.0])
    catalog.add("wrong", 1, Entry(fitted, signature()))
    with pytest.raises(ModelRefused, match="expects columns"):
        _predictor(catalog).converge()


def test_a_spec_added_while_running_gives_the_schema(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from tests.support.toy import toy_frame

    frame = toy_frame(100)
    features = frame[["a", "b", "flag"]].astype({"flag": float})
    model = LogisticRegression().fit(features, frame["label"])
    catalog = Catalog()
    catalog.add("toy", 1, Entry(model))  # trained elsewhere, logged without a signature
    predictor = _predictor(catalog, read_specs=SpecReader(tmp_path))
    with pytest.raises(ModelRefused, match="no signature"):
        predictor.converge()
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "spec.yaml").write_text(TOY_SPEC)
    (served,) = predictor.converge()  # the spec is new grounds: tried again
    assert served.schema.source == "spec"
    assert served.schema.bools_as_float
    rows = frame[["a", "b", "flag"]].head(4)
    assert predictor.predict("toy", rows).predictions == model.predict(features.head(4)).tolist()


def test_a_bad_spec_is_skipped_and_the_others_read(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "spec.yaml").write_text(TOY_SPEC)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "spec.yaml").write_text("name: bad\ncolumns: []\n")
    assert list(SpecReader(tmp_path)()) == ["toy"]


# --- the replica ----------------------------------------------------------------------------


class Streams:
    """Where the replica XADDs `model-loads`, kept in memory."""

    def __init__(self) -> None:
        self.events: list[ModelLoaded] = []

    async def xadd(self, stream: str, fields: dict[str, Any], maxlen: int | None = None) -> None:
        self.events.append(ModelLoaded.model_validate_json(fields["__data__"]))


def _replica(catalog: Catalog, board: FakeStatusBoard, streams: Streams) -> Replica:
    settings = PredictorSettings(common=CommonSettings(consumer_name="r1"), converge_s=3600)
    predictor = Predictor(
        catalog, {}, ModelCache(), policy=LoadPolicy(allow_pickle=False), serves=settings.serves
    )
    metrics = PredictorMetrics()
    online = OnlinePredictor(None, predictor, "r1", 4, metrics=metrics)  # type: ignore[arg-type]
    return Replica(settings, predictor, metrics, board, online, streams)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_heartbeat_says_models_and_schemas_and_beats_at_once_on_a_change(
    catalog: Catalog,
) -> None:
    board, streams = FakeStatusBoard(), Streams()
    replica = _replica(catalog, board, streams)
    await replica.converge("start")
    ticker = asyncio.create_task(
        beat(board, "predictor", "r1", interval=600, details=replica.serving, now=replica.changed)
    )
    try:
        details = await eventually(_said(board, {"churny": 1, "price": 1}), timeout=2)
        schema = ModelSchema.model_validate(details["schemas"]["price"])
        assert schema.names == ("a", "b")

        catalog.add("late", 2, _regressor())
        await replica.converge()
        # The ticker beats every 10 minutes: only a beat at once can say it this soon.
        await eventually(_said(board, {"churny": 1, "price": 1, "late": 2}), timeout=2)

        del catalog.production["price"]
        await replica.converge()
        latest = await eventually(_said(board, {"churny": 1, "late": 2}), timeout=2)
        assert set(latest["schemas"]) == {"churny", "late"}
    finally:
        ticker.cancel()


def _said(board: FakeStatusBoard, models: dict[str, int]) -> Any:
    """Whether the latest heartbeat says these models are served: its details, if so."""

    async def latest() -> dict[str, Any] | None:
        details = board.details[-1] if board.details else None
        return details if details is not None and details["models"] == models else None

    return latest


@pytest.mark.anyio
async def test_a_refusal_is_announced_counted_and_not_retried_each_converge() -> None:
    catalog = Catalog()
    catalog.add("pickled", 1, Entry(Answers(len), signature(), CLOUDPICKLE_PYFUNC))
    board, streams = FakeStatusBoard(), Streams()
    replica = _replica(catalog, board, streams)
    await replica.converge("start")
    await replica.converge()
    (event,) = streams.events
    assert (event.model_name, event.version, event.loaded, event.serving) == (
        "pickled",
        1,
        False,
        None,
    )
    assert "STREAMOPS_PREDICTOR_ALLOW_PICKLE" in event.reason
    refused = replica.metrics.registry.get_sample_value(
        "streamops_model_loads_total",
        {"model": "pickled", "trigger": "start", "outcome": "refused"},
    )
    assert refused == 1
    assert catalog.loads == []  # decided before anything was loaded

    await replica.promoted(ModelPromoted(model_name="pickled", version=1, reason="manual"))
    assert len(streams.events) == 2  # promoted again: tried again (and refused again)
    assert replica.serving() == {"models": {}, "schemas": {}, "canaries": {}}


@pytest.mark.anyio
async def test_a_converge_does_not_undo_a_move_announced_while_it_read_the_registry(
    catalog: Catalog,
) -> None:
    """The registry said v2 when the converge read it; a rollback to v1 was announced while it
    read (and loaded): the stale decision is dropped, v1 keeps serving, nothing is announced
    for v2; the next converge reads v1 and has nothing to do."""
    board, streams = FakeStatusBoard(), Streams()
    replica = _replica(catalog, board, streams)
    await replica.converge("start")
    catalog.add("price", 2, _regressor(3.0))
    read = catalog.production_versions

    def read_then_rollback() -> dict[str, int]:
        found = read()
        catalog.production["price"] = 1  # rolled back, and the event handled, meanwhile
        replica.predictor.announce("price")
        return found

    catalog.production_versions = read_then_rollback  # type: ignore[method-assign]
    await replica.converge()
    assert replica.predictor.cache.version("price") == 1
    assert [e.version for e in streams.events if e.model_name == "price"] == [1]
    catalog.production_versions = read  # type: ignore[method-assign]
    await replica.converge()
    assert replica.predictor.cache.version("price") == 1
    # Promoted for real later: swapped in.
    await replica.promoted(ModelPromoted(model_name="price", version=2, reason="manual"))
    assert replica.predictor.cache.version("price") == 2
