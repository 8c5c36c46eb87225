"""The dataset specs of the datasets dir, read again at every converge, so a spec added while
a replica runs gives its model's schema. One bad spec is skipped (and said once), not allowed
to stop the replica from serving the others."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shared.datasets import DatasetSpec, served_specs
from shared.errors import StreamopsError

log = logging.getLogger(__name__)


@dataclass
class SpecReader:
    datasets_dir: Path
    _warned: set[tuple[str, str]] = field(default_factory=set)

    def __call__(self) -> dict[str, DatasetSpec]:
        """The specs with a training section, by registered model name."""
        found: dict[str, DatasetSpec] = {}
        for path in sorted(self.datasets_dir.glob("*/spec.yaml")):
            name = path.parent.name
            try:
                found.update(served_specs(self.datasets_dir, [name]))
            except (StreamopsError, OSError) as exc:
                if (name, str(exc)) not in self._warned:
                    self._warned.add((name, str(exc)))
                    log.warning("dataset spec %s skipped: %s", path, exc)
        return found
