"""Generate the bundled rentals sample (deterministic): `python datasets/rentals/generate.py`.

Car-rental bookings; predict which are cancelled before pickup. The cancellations depend on
features a model only sees through feature engineering (the entry point in
datasets/plugins/rentals_features.py): the price per day and the deposit against the total
price (ratios), the pickup's weekday (a date part, from a text date), a customer's past
cancellation rate, and how busy the branch is.
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROWS = 4000
SEED = 20261202
CLASSES = ("economy", "compact", "midsize", "suv", "van", "premium")
BASE_RATE = (32.0, 38.0, 47.0, 66.0, 74.0, 110.0)
CHANNELS = ("web", "app", "agent", "partner")
# Branches, busiest first: a few airports take most bookings.
BRANCHES = tuple(
    f"{city}-{n:02d}" for city in ("AMS", "BER", "LIS", "MAD", "OSL") for n in (1, 2, 3, 4)
)
COLUMNS = (
    "booking_id",
    "booked_at",
    "pickup_date",
    "lead_days",
    "rental_days",
    "vehicle_class",
    "channel",
    "branch",
    "daily_rate",
    "total_price",
    "deposit",
    "prior_rentals",
    "prior_cancellations",
    "insurance",
    "cancelled",
)


def generate(rows: int = ROWS, seed: int = SEED) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    booked = [start + timedelta(minutes=int(m)) for m in rng.integers(0, 365 * 1440, rows)]
    lead = np.minimum(rng.geometric(1 / 18, rows) - 1, 365)
    days = np.minimum(rng.geometric(1 / 4, rows), 60)
    cls = rng.choice(len(CLASSES), rows, p=[0.3, 0.25, 0.2, 0.12, 0.05, 0.08])
    channel = rng.choice(len(CHANNELS), rows, p=[0.45, 0.3, 0.1, 0.15])
    weights = 1 / np.arange(1, len(BRANCHES) + 1) ** 1.1
    branch = rng.choice(len(BRANCHES), rows, p=weights / weights.sum())
    rate = np.round(np.array(BASE_RATE)[cls] * rng.lognormal(0, 0.18, rows), 2)
    discount = np.where(days >= 7, 0.15, 0.0) + rng.uniform(0, 0.1, rows)
    extras = rng.choice([0.0, 15.0, 40.0], rows, p=[0.6, 0.3, 0.1])
    total = np.round(rate * days * (1 - discount) + extras, 2)
    deposit = np.round(total * rng.uniform(0.0, 0.5, rows), 2)
    prior = rng.poisson(2.0, rows)
    prior_cancel = rng.binomial(prior, rng.beta(1.2, 5.0, rows))
    insurance = rng.random(rows) < 0.4
    pickup = [b.date() + timedelta(days=int(d)) for b, d in zip(booked, lead, strict=True)]
    weekday = np.array([p.weekday() for p in pickup])
    busy = branch < 4  # the four busiest branches: fewer cars left, firmer bookings
    logit = (
        -0.6
        + 1.4 * np.log1p(lead) / np.log(30)
        - 6.0 * deposit / total
        + 4.0 * prior_cancel / (prior + 1)
        + 0.03 * (rate - np.array(BASE_RATE)[cls])
        + 0.8 * (channel == 3)
        - 1.0 * (weekday >= 5)
        - 0.8 * busy
        - 0.4 * insurance
    )
    cancelled = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return [
        {
            "booking_id": f"R{seed % 1000:03d}{i:06d}",
            "booked_at": booked[i].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pickup_date": pickup[i].isoformat(),
            "lead_days": str(int(lead[i])),
            "rental_days": str(int(days[i])),
            "vehicle_class": CLASSES[int(cls[i])],
            "channel": CHANNELS[int(channel[i])],
            "branch": BRANCHES[int(branch[i])],
            "daily_rate": f"{rate[i]:.2f}",
            "total_price": f"{total[i]:.2f}",
            "deposit": f"{deposit[i]:.2f}",
            "prior_rentals": str(int(prior[i])),
            "prior_cancellations": str(int(prior_cancel[i])),
            "insurance": "true" if insurance[i] else "false",
            "cancelled": str(int(cancelled[i])),
        }
        for i in range(rows)
    ]


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("rentals.csv")
    write(target, generate())
    print(f"wrote {target}")
