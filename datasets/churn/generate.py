"""Generate the bundled churn sample (deterministic): `python datasets/churn/generate.py`.

Churn depends on the features through a logistic model, so a trained classifier has
something real to find. A few rows are broken on purpose, each in a different way, so the
ingest demo has a quarantine to show; BROKEN lists them.
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROWS = 5000
SEED = 20261128
PLANS = ("basic", "standard", "premium")
COLUMNS = (
    "customer_id",
    "tenure_months",
    "monthly_charges",
    "support_calls",
    "usage_gb",
    "satisfaction",
    "plan",
    "autopay",
    "signup_at",
    "churned",
)
# (row number counted from 1, column, bad value): what the quarantine must list.
BROKEN = (
    (17, "tenure_months", "twelve"),
    (230, "monthly_charges", "-5.0"),
    (1001, "plan", "platinum"),
    (1777, "signup_at", "2024-02-30T10:00:00"),
    (2500, "satisfaction", "7.5"),
    (3120, "autopay", "maybe"),
    (4000, "churned", "2"),
    (4999, "customer_id", ""),
)


def generate(rows: int = ROWS, seed: int = SEED, broken: bool = True) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 120, rows)
    plan = rng.choice(len(PLANS), rows, p=[0.5, 0.35, 0.15])
    charges = np.round(20 + plan * 25 + rng.gamma(2.0, 10.0, rows), 2)
    calls = rng.poisson(1.5, rows)
    usage = np.round(rng.lognormal(2.0, 0.8, rows), 3)
    satisfaction = np.round(np.clip(rng.normal(3.6, 0.9, rows), 1, 5), 1)
    surveyed = rng.random(rows) < 0.8
    autopay = rng.random(rows) < 0.55
    start = datetime(2015, 1, 1, tzinfo=UTC)
    signup = [start + timedelta(minutes=int(m)) for m in rng.integers(0, 10 * 365 * 1440, rows)]
    logit = (
        0.8
        - 0.035 * tenure
        + 0.018 * (charges - 60)
        + 0.45 * calls
        - 0.55 * np.where(surveyed, satisfaction - 3.5, 0)
        - 0.7 * autopay
        - 0.3 * (plan == 2)
    )
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit))
    out = []
    for i in range(rows):
        out.append(
            {
                "customer_id": f"C{seed % 1000:03d}{i:06d}",
                "tenure_months": str(int(tenure[i])),
                "monthly_charges": f"{charges[i]:.2f}",
                "support_calls": str(int(calls[i])),
                "usage_gb": f"{usage[i]:.3f}",
                "satisfaction": f"{satisfaction[i]:.1f}" if surveyed[i] else "",
                "plan": PLANS[int(plan[i])],
                "autopay": "true" if autopay[i] else "false",
                "signup_at": signup[i].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "churned": str(int(churned[i])),
            }
        )
    if broken:
        for row, column, value in BROKEN:
            out[row - 1][column] = value
    return out


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("churn.csv")
    write(target, generate())
    print(f"wrote {target}")
