"""Sampling profiles of the processes under load, for bench/serve.py's `--profile DIR`.

py-spy (PyPI: `pip install py-spy`) samples a running Python process from outside, at 100 Hz,
without changing it; it records only the samples in which the process holds the GIL (`--gil`),
so idle waits in the event loop do not drown the work. The collapsed stacks are written to
DIR/<label>.txt (readable by flamegraph tools and speedscope), and a summary is printed: the
share of samples in each function (inclusive) and at the top of the stack (self).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SHOWN = 15
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")


@dataclass
class Profiles:
    directory: Path
    seconds: float
    _running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, groups: dict[str, list[int]]) -> None:
        binary = shutil.which("py-spy")
        if binary is None:
            raise SystemExit("--profile needs py-spy on PATH: pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        for label, leaders in groups.items():
            for pid in leaders:
                out = self.directory / f"{label}-{pid}.txt"
                argv = [binary, "record", "--pid", str(pid), "--subprocesses", "--gil"]
                argv += ["--nolineno", "--format", "raw", "--output", str(out)]
                argv += ["--duration", str(max(1, round(self.seconds)))]
                self._running[f"{label}-{pid}"] = subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )

    def finish(self) -> None:
        for name, process in self._running.items():
            process.wait(timeout=self.seconds + 60)
            path = self.directory / f"{name}.txt"
            if path.exists():
                print(summary(name, path.read_text()))
        self._running.clear()


def summary(name: str, collapsed: str) -> str:
    """The functions with the most samples, inclusive and self, as a share of all samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";") if not f.startswith("process ")]
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    if total == 0:
        return f"profile {name}: no samples"
    lines = [f"profile {name}: {total} samples holding the GIL"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  {title}:")
        lines += [
            f"    {count / total:6.1%}  {frame}" for frame, count in counter.most_common(SHOWN)
        ]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`function (path/to/module.py)` → `function (module.py)`: enough to tell them apart."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({Path(match['file']).name})"
