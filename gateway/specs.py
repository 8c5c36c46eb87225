"""The dataset specs of the datasets dir, as the gateway serves them: the input schema of each
model a spec trains (`spec_schema`, constraints included), read again when the spec files
change, so a spec dropped into the datasets dir gets its predict route without a restart.

The reconciler asks every second and on every unknown model, so the check is cheap: one glob
and one stat per spec; the YAML is parsed again only when the set of files, their mtimes or
their sizes change (size as well: two writes within the clock's tick share an mtime). A bad
spec is skipped and said once per change, not allowed to take the others' routes away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shared.datasets import served_specs, spec_schema
from shared.errors import StreamopsError
from shared.schema import ModelSchema

log = logging.getLogger(__name__)
Stamp = tuple[tuple[str, int, int], ...]


@dataclass
class SpecSchemas:
    datasets_dir: Path
    _stamp: Stamp | None = None
    _schemas: dict[str, ModelSchema] = field(default_factory=dict)

    def __call__(self) -> dict[str, ModelSchema]:
        """Registered model name → its input schema, for the specs with a training section."""
        stamp = self._stamp_now()
        if stamp != self._stamp:
            self._schemas = self._read([Path(path) for path, _, _ in stamp])
            self._stamp = stamp
        return self._schemas

    def _stamp_now(self) -> Stamp:
        found = []
        for path in sorted(self.datasets_dir.glob("*/spec.yaml")):
            try:
                stat = path.stat()
            except OSError:
                continue  # removed between the glob and the stat
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    def _read(self, paths: list[Path]) -> dict[str, ModelSchema]:
        schemas: dict[str, ModelSchema] = {}
        for path in paths:
            try:
                specs = served_specs(self.datasets_dir, [path.parent.name])
            except (StreamopsError, OSError) as exc:
                log.warning("dataset spec %s skipped: %s", path, exc)
                continue
            schemas.update({name: spec_schema(spec) for name, spec in specs.items()})
        return schemas
