"""Ingest throughput and memory against a bare pyarrow CSV → Parquet conversion, in one run.

    python bench/ingest.py [--rows 1000000] [--bad-fraction 0.0005] [--workdir DIR]

Generates a CSV (20 float features, an int label, a category, a timestamp; a small fraction
of rows broken on purpose), then runs, each in a fresh process so peak RSS is its own:

- baseline: pyarrow.csv.read_csv + pyarrow.parquet.write_table, zstd (what "just convert"
  costs: no validation, the whole file in memory);
- streamops: the full ingest path (read in blocks, validate every row with the dataset's
  pydantic semantics, write the version and its quarantine, commit).

Prints rows/s of each, their ratio and each peak RSS. Targets: ratio >= 0.7 and ingest peak
RSS <= 512 MiB. Figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

FEATURES = 20


def generate(path: Path, rows: int, bad_fraction: float, seed: int = 7) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for i in range(FEATURES):
        columns[f"f{i}"] = pa.array(np.round(rng.normal(0, 1, rows), 6))
    columns["label"] = pa.array(rng.integers(0, 2, rows))
    columns["segment"] = pa.array(np.array(list("abcd"))[rng.integers(0, 4, rows)])
    start = np.datetime64("2024-01-01T00:00:00", "s")
    stamps = start + rng.integers(0, 365 * 86400, rows).astype("timedelta64[s]")
    columns["event_at"] = pa.array(np.datetime_as_string(stamps, unit="s", timezone="UTC"))
    # Break a few rows, in different columns: a word in a float column, an unknown category.
    bad = pa.array(rng.random(rows) < bad_fraction)
    columns["f3"] = pc.if_else(bad, "n/a", pc.cast(columns["f3"], pa.string()))
    other = pa.array(rng.random(rows) < bad_fraction)
    columns["segment"] = pc.if_else(other, "z", columns["segment"])
    pacsv.write_csv(pa.table(columns), path)


def write_spec(datasets: Path) -> None:
    common.write_spec(
        datasets,
        "bench",
        [f"f{i}" for i in range(FEATURES)],
        extra_columns=[
            {"name": "segment", "type": "str", "allowed": ["a", "b", "c", "d"]},
            {"name": "event_at", "type": "datetime"},
        ],
        timestamp="event_at",
    )


def run_baseline(csv_path: Path, out: Path) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(csv_path)
    pq.write_table(table, out / "baseline.parquet", compression="zstd")
    return int(table.num_rows)


def run_streamops(csv_path: Path, out: Path) -> int:
    from ingestor.service import ingest
    from shared.events import DataArrived, DataIngested
    from shared.feature_store import FeatureStore
    from shared.settings import CommonSettings, IngestorSettings

    common = CommonSettings(feature_store_root=out / "store", datasets_dir=out / "datasets")
    settings = IngestorSettings(common=common, data_roots=[csv_path.parent])
    event = DataArrived(dataset="bench", source={"kind": "csv", "uri": str(csv_path)})
    result = ingest(event, settings, FeatureStore(common.feature_store_root))
    if not isinstance(result, DataIngested):
        raise SystemExit(f"ingest rejected the batch: {result}")
    return result.rows + result.quarantined_rows


def child(which: str, csv_path: Path, out: Path) -> None:
    # Imports are start-up cost, not per-row cost: load them before the clock starts.
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401

    if which == "streamops":
        import ingestor.service  # noqa: F401

    started = time.perf_counter()
    rows = (run_baseline if which == "baseline" else run_streamops)(csv_path, out)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mib": peak_kib / 1024}))


def measure(which: str, csv_path: Path, out: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", which, str(csv_path), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    by_time = sorted(runs, key=lambda r: r["seconds"])
    middle = by_time[len(by_time) // 2]
    return {**middle, "peak_mib": max(r["peak_mib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--bad-fraction", type=float, default=0.0005)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians are shown")
    parser.add_argument("--child", nargs=3, metavar=("WHICH", "CSV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, csv_path, out = args.child
        child(which, Path(csv_path), Path(out))
        return
    with tempfile.TemporaryDirectory(prefix="streamops-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        csv_path = work / "bench.csv"
        print(f"generating {args.rows:,} rows ...", flush=True)
        generate(csv_path, args.rows, args.bad_fraction)
        write_spec(work / "datasets")
        size_mb = csv_path.stat().st_size / 1e6
        # Alternate the two, several times: this machine's timings wander by +-20% run to run.
        bases, ourses = [], []
        for _ in range(args.repeat):
            bases.append(measure("baseline", csv_path, work))
            ourses.append(measure("streamops", csv_path, work))
            shutil.rmtree(work / "store", ignore_errors=True)
        base = _median(bases)
        ours = _median(ourses)
    base_rate = base["rows"] / base["seconds"]
    our_rate = ours["rows"] / ours["seconds"]
    ratio = our_rate / base_rate
    print(
        f"input: {args.rows:,} rows, {size_mb:.0f} MB of CSV, {args.bad_fraction:.2%} bad; "
        f"median of {args.repeat} runs each"
    )
    print(f"{'path':<44}{'rows/s':>12}{'seconds':>10}{'peak RSS MiB':>15}")
    print(
        f"{'baseline: pyarrow CSV -> Parquet (zstd)':<44}{base_rate:>12,.0f}"
        f"{base['seconds']:>10.2f}{base['peak_mib']:>15.0f}"
    )
    print(
        f"{'streamops ingest (validate, version, quarantine)':<44}{our_rate:>12,.0f}"
        f"{ours['seconds']:>10.2f}{ours['peak_mib']:>15.0f}"
    )
    print(
        f"ratio streamops/baseline: {ratio:.2f} (target >= 0.70): "
        f"{'PASS' if ratio >= 0.7 else 'MISS'}"
    )
    print(
        f"ingest peak RSS: {ours['peak_mib']:.0f} MiB (target <= 512): "
        f"{'PASS' if ours['peak_mib'] <= 512 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
