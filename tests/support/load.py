"""Constant HTTP predict traffic for the e2e swap tests."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx


class Load:
    """Constant concurrent traffic from threads, recording every answer."""

    def __init__(
        self,
        url: str,
        row: dict[str, Any],
        threads: int = 6,
        varied: list[dict[str, Any]] | None = None,
    ) -> None:
        self.url = url
        self.row = row
        # Rows sent in turn instead of `row` alone (a distribution of answers, not one).
        self.varied = varied or [row]
        self.sent = itertools.count()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.count = 0
        self.failures: list[str] = []
        # replica → (sent, answered, version) of every answer it gave
        self.by_replica: dict[str, list[tuple[float, float, int]]] = {}

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    row = self.varied[next(self.sent) % len(self.varied)]
                    answer = http.post(self.url, json={"rows": [row]})
                except httpx.HTTPError as exc:
                    self._record(None, f"{type(exc).__name__}: {exc}", started)
                    continue
                self._record(answer, None, started)

    def _record(self, answer: httpx.Response | None, error: str | None, started: float) -> None:
        received = time.monotonic()
        with self.lock:
            self.count += 1
            if answer is None or answer.status_code != 200:
                self.failures.append(error or f"{answer.status_code}: {answer.text}")  # type: ignore[union-attr]
                return
            replica = answer.headers["X-Served-By"]
            version = int(answer.headers["X-Model-Version"])
            self.by_replica.setdefault(replica, []).append((started, received, version))
