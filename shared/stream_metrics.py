"""Stream health from Redis itself: length of every stream, pending entries and lag of every
consumer group, and the size of every dead-letter stream, read with XINFO at scrape time (a
custom collector: the figures are Redis's, not counted by a process that may have restarted).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.events import ALL_EVENTS
from shared.keys import dead_letter_stream
from shared.wire import text


class StreamsCollector(Collector):
    """`client` is a synchronous redis-py client (scrapes run in a thread)."""

    def __init__(self, client: Any, streams: tuple[str, ...] | None = None) -> None:
        self.client = client
        self.streams = streams or tuple(e.stream for e in ALL_EVENTS)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples: what this collector exports, for the registry (and the
        tests that check dashboards and alert rules against it) without asking Redis."""
        yield from _families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        length, pending, lag, dead = _families()
        for stream in self.streams:
            if not self.client.exists(stream):
                continue
            length.add_metric([stream], self.client.xlen(stream))
            dead.add_metric([stream], self.client.xlen(dead_letter_stream(stream)))
            for group in self.client.xinfo_groups(stream):
                name = text(group["name"])
                pending.add_metric([stream, name], int(group.get("pending") or 0))
                if group.get("lag") is not None:  # unknown after some deletions: left out
                    lag.add_metric([stream, name], int(group["lag"]))
        yield from (length, pending, lag, dead)


def _families() -> tuple[GaugeMetricFamily, ...]:
    length = GaugeMetricFamily(
        "streamops_stream_length", "Entries in the stream (XLEN)", labels=["stream"]
    )
    pending = GaugeMetricFamily(
        "streamops_stream_group_pending",
        "Entries delivered to the group and not acked yet",
        labels=["stream", "group"],
    )
    lag = GaugeMetricFamily(
        "streamops_stream_group_lag",
        "Entries not yet delivered to the group (XINFO GROUPS lag)",
        labels=["stream", "group"],
    )
    dead = GaugeMetricFamily(
        "streamops_dead_letters",
        "Entries in the stream's dead-letter stream",
        labels=["stream"],
    )
    return length, pending, lag, dead
