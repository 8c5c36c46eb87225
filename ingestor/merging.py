"""Merging the prediction log's and the labels' small parts (shared/partmerge.py), every
`log_merge_s`, in each ingestor beside its logger: a loop of its own, so a long merge (the
first one after an upgrade, say) never holds the logger back while entries wait in Redis."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from shared import labels, partmerge, predlog

log = logging.getLogger(__name__)


@dataclass
class LogMerger:
    store_root: Path
    every_s: float

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a partition removed under us (retention), a full disk: next time
                log.warning("merging the prediction log's parts failed", exc_info=True)

    async def once(self) -> partmerge.Merged:
        roots = [
            predlog.log_root(self.store_root),
            self.store_root / labels.LABELS_DIR,
            self.store_root / labels.SHADOW_LABELS_DIR,
        ]
        done = await anyio.to_thread.run_sync(partmerge.merge_all, roots)
        if done.made or done.removed:
            log.info(
                "prediction log and labels: %d parts merged into %d files; %d replaced parts "
                "removed",
                done.replaced,
                len(done.made),
                done.removed,
            )
        return done
