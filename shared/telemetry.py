"""Logging (and, in a later issue, metrics) set up the same way in every service."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """One line per record on stderr; idempotent, so tests can build several apps."""
    root = logging.getLogger()
    if not any(getattr(h, "_streamops", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._streamops = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
