"""Batch scoring's pure functions: confinement, chunk planning, reading ranges across row
groups, scoring a chunk, assembly in order, idempotent rewrites, inline rows."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from predictor.cache import Served
from predictor.scoring import (
    assemble,
    confine_parquet,
    inspect,
    part_path,
    parts_dir,
    plan_chunks,
    read_range,
    remove_parts,
    resolve,
    score_chunk,
    score_rows,
    scored_path,
)
from shared.datasets import DatasetSpec, parse_spec, spec_schema
from shared.errors import ScoreInputRejected
from shared.events import FeatureStoreInput, ParquetInput
from shared.feature_store import FeatureStore
from tests.support.toy import TOY_SPEC, toy_frame, toy_served


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return parse_spec(TOY_SPEC)


@pytest.fixture(scope="module")
def served(spec: DatasetSpec) -> Served:
    return toy_served(spec, 3)


@pytest.fixture
def source(tmp_path: Path) -> str:
    """1,000 rows in row groups of 128 rows: ranges straddle group boundaries."""
    path = tmp_path / "in" / "rows.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pandas(toy_frame(1000, seed=1)), path, row_group_size=128)
    return str(path)


def _expected(served: Served, path: str) -> list[Any]:
    frame = pq.read_table(path).to_pandas()[["a", "b", "flag"]].astype({"flag": float})
    return list(served.model.predict(frame))


def test_chunks_cover_every_row_once_in_order() -> None:
    assert plan_chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_chunks(8, 4) == [(0, 4), (4, 8)]
    assert plan_chunks(3, 100) == [(0, 3)]
    ranges = plan_chunks(100_001, 5_000)
    assert sum(stop - start for start, stop in ranges) == 100_001
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_a_range_across_row_groups_reads_exactly_its_rows(source: str) -> None:
    whole = pq.read_table(source).column("a").to_pylist()
    for start, stop in [(0, 128), (100, 300), (127, 129), (990, 1000), (0, 1000)]:
        part = read_range(source, start, stop, ["a"])
        assert part.column("a").to_pylist() == whole[start:stop]


def test_chunks_scored_and_assembled_give_one_prediction_per_row_in_order(
    served: Served, spec: DatasetSpec, source: str
) -> None:
    output = scored_path(source)
    ranges = plan_chunks(1000, 300)
    for index, rows in reversed(list(enumerate(ranges))):  # order of completion does not matter
        scored = score_chunk(served, source, rows, part_path(output, "j1", index))
        assert scored.results.num_rows == scored.inputs.num_rows == rows[1] - rows[0]
    assert assemble(output, "j1", len(ranges)) == 1000
    result = pq.read_table(output)
    assert result.column_names == ["row", "prediction", "model_version", "probability_0",
                                   "probability_1"]  # fmt: skip
    assert result.column("row").to_pylist() == list(range(1000))
    assert result.column("prediction").to_pylist() == _expected(served, source)
    assert set(result.column("model_version").to_pylist()) == {3}
    assert Path(output).name == "rows.scored.parquet"
    remove_parts(output, "j1")
    assert not Path(parts_dir(output, "j1")).exists()


def test_a_chunk_scored_twice_rewrites_the_same_content(
    served: Served, spec: DatasetSpec, source: str
) -> None:
    part = part_path(scored_path(source), "j2", 0)
    score_chunk(served, source, (200, 450), part)
    first = pq.read_table(part)
    score_chunk(served, source, (200, 450), part)
    assert pq.read_table(part).equals(first)
    assert [p.name for p in Path(part).parent.iterdir()] == [
        Path(part).name
    ]  # no temporary file left


def test_inputs_are_confined_to_the_roots(tmp_path: Path, source: str) -> None:
    root = Path(source).parent.resolve()
    real = str(Path(source).resolve())
    assert confine_parquet(source, [root]) == real
    assert confine_parquet("rows.parquet", [root]) == real
    assert confine_parquet(f"file://{source}", [root]) == real
    (tmp_path / "secret.parquet").write_bytes(b"x")
    for uri in [str(tmp_path / "secret.parquet"), "../secret.parquet", "s3://b/x.parquet"]:
        with pytest.raises(ScoreInputRejected):
            confine_parquet(uri, [root])
    with pytest.raises(ScoreInputRejected, match="no such file"):
        confine_parquet(str(root / "missing.parquet"), [root])


def test_a_file_without_the_feature_columns_or_rows_is_refused(
    tmp_path: Path, spec: DatasetSpec
) -> None:
    partial = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"a": [1.0]}), partial)
    with pytest.raises(ScoreInputRejected, match=r"lacks feature columns \['b', 'flag'\]"):
        inspect(str(partial), scored_path(str(partial)), spec_schema(spec))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pandas(toy_frame(0)), empty)
    with pytest.raises(ScoreInputRejected, match="no rows"):
        inspect(str(empty), scored_path(str(empty)), spec_schema(spec))
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(ScoreInputRejected, match="not a readable Parquet"):
        inspect(str(text), scored_path(str(text)), spec_schema(spec))


def test_outputs_go_beside_the_input_or_under_the_store(tmp_path: Path, source: str) -> None:
    store = FeatureStore(tmp_path / "store")
    root = Path(source).parent.resolve()
    assert resolve("job-1", ParquetInput(uri=source), [root], store) == (
        str(Path(source).resolve()),
        str(root / "rows.scored.parquet"),
    )
    with pytest.raises(ScoreInputRejected, match="no version"):
        resolve("job-1", FeatureStoreInput(dataset="toy"), [root], store)
    with pytest.raises(ScoreInputRejected, match="cannot name a file"):
        resolve("../escape", FeatureStoreInput(dataset="toy", version=1), [root], store)


def test_inline_rows_are_predicted_in_order_and_bounded(served: Served, spec: DatasetSpec) -> None:
    frame = toy_frame(20, seed=2)
    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()}
        for row in frame.drop(columns=["label"]).to_dict("records")
    ]
    expected = list(served.model.predict(frame[["a", "b", "flag"]].astype({"flag": float})))
    assert score_rows(served, rows, limit=20) == expected
    with pytest.raises(ScoreInputRejected, match="at most 19"):
        score_rows(served, rows, limit=19)
    with pytest.raises(ScoreInputRejected, match="lack feature columns"):
        score_rows(served, [{"a": 1.0}], limit=20)
    with pytest.raises(ScoreInputRejected, match="do not fit"):
        score_rows(served, [{"a": "x", "b": 1.0, "flag": True}], limit=20)


def test_a_pinned_version_is_the_live_one_the_previous_one_or_loaded_once(
    served: Served, spec: DatasetSpec
) -> None:
    from predictor.cache import ModelCache
    from predictor.service import Predictor
    from shared.errors import NoModelInService
    from shared.events import ModelPromoted
    from tests.support.shelf import ModelShelf

    shelf = ModelShelf(models=dict.fromkeys((1, 2, 3, 4), served.model), production=1, name="toy")
    predictor = Predictor(shelf, {"toy": spec}, ModelCache())
    predictor.converge()
    predictor.promoted(ModelPromoted(model_name="toy", version=2, reason="manual"))
    assert shelf.loads == [1, 2]
    assert predictor.model_for("toy", 2).version == 2  # live
    assert predictor.model_for("toy", 1).version == 1  # previous
    assert shelf.loads == [1, 2]
    assert predictor.model_for("toy", 3).version == 3
    assert predictor.model_for("toy", 3).version == 3
    assert shelf.loads == [1, 2, 3]  # loaded once, then kept
    predictor.model_for("toy", 4)
    predictor.model_for("toy", 3)
    assert shelf.loads == [1, 2, 3, 4]  # two kept: 3 and 4
    with pytest.raises(NoModelInService):
        predictor.model_for("other", 1)


def test_chunk_paths_outside_the_roots_are_refused(tmp_path: Path, source: str) -> None:
    from predictor.scoring import check_chunk_paths
    from shared.errors import ChunkRefused

    root = Path(source).parent.resolve()
    check_chunk_paths(source, scored_path(source), [root])
    with pytest.raises(ChunkRefused, match="input"):
        check_chunk_paths("/etc/passwd", scored_path(source), [root])
    with pytest.raises(ChunkRefused, match="output"):
        check_chunk_paths(source, str(root / ".." / "x.parquet"), [root])
    bucket = ["s3://bucket/in"]
    check_chunk_paths("s3://bucket/in/x.parquet", "s3://bucket/in/x.scored.parquet", [], bucket)
    for outside in ["s3://bucket/inbox/x.parquet", "s3://bucket/in/../x.parquet", "s3://other/x"]:
        with pytest.raises(ChunkRefused, match="input"):
            check_chunk_paths(outside, "s3://bucket/in/y.parquet", [], bucket)


def test_a_model_with_several_outputs_gets_one_column_each(source: str) -> None:
    from datetime import UTC, datetime

    import pandas as pd

    from shared.schema import Column, ModelSchema
    from tests.support.catalog import Answers

    schema = ModelSchema(
        model_name="quote",
        source="signature",
        columns=(Column(name="a", type="float"), Column(name="b", type="float")),
    )
    model = Answers(lambda f: pd.DataFrame({"low": f["a"] - 1, "high": f["b"] + 1}))
    served = Served("quote", 2, model, schema, None, datetime.now(UTC))
    part = part_path(scored_path(source), "j9", 0)
    assert score_chunk(served, source, (0, 10), part).results.num_rows == 10
    table = pq.read_table(part)
    assert table.column_names == ["row", "prediction_low", "prediction_high", "model_version"]
    whole = pq.read_table(source).slice(0, 10)
    assert table.column("prediction_low").to_pylist() == pytest.approx(
        [a - 1 for a in whole.column("a").to_pylist()]
    )
    # Inline rows answer as the online path does: one object per row.
    assert score_rows(served, [{"a": 1.0, "b": 2.0}], limit=5) == [{"low": 0.0, "high": 3.0}]
