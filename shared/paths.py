"""Paths named by events: events come from outside, so a path is used only if it is a regular
file inside one of the configured roots, after symlinks and `..` are resolved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.errors import StreamopsError


def confine_file(
    uri: str,
    roots: Sequence[Path],
    what: str,
    roots_name: str,
    error: type[StreamopsError],
) -> Path:
    """The real path of `uri` (a local path or file:// URI), if it is a regular file inside
    one of `roots`; a relative path is looked up in each root in order, and the first root
    holding it wins. Otherwise `error`, saying why: no such file (naming the roots tried), or
    outside the roots (`what` names the thing, `roots_name` the roots, for people)."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise error(f"file URI with a remote host is not allowed: {uri}")
        raw = Path(unquote(parts.path))
    elif "://" in uri:
        raise error(f"{what} must be a local path or file:// URI, got {uri!r}")
    else:
        raw = Path(uri).expanduser()
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    escaped = True
    for candidate in candidates:
        real = candidate.resolve()
        if not any(real.is_relative_to(root) for root in roots):
            continue  # `..` or a symlink leads out: never read, whatever it points at
        escaped = False
        if real.is_file():
            return real
    shown = _shown(roots)
    if escaped:
        raise error(f"{uri} is outside the {roots_name} ({shown})")
    if raw.is_absolute():
        raise error(f"{uri}: no such file")
    raise error(f"{uri}: no such file in the {roots_name} (tried {shown})")


def _shown(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "none configured"
