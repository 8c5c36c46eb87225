"""Which requests a canary answers (docs/rollout.md).

A request goes to the canary when its routing key hashes under the canary's share: the
`X-Routing-Key` header when the client sends one (so a client stays on one version across
requests, gateway workers and restarts), else the request id (random, so each request is drawn
afresh). The hash is BLAKE2b, not Python's `hash()`: that one is salted per process, and every
gateway worker must put a key on the same side.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def position(key: str) -> float:
    """Where `key` falls in [0, 1), the same in every process."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def target(canary: tuple[int, float] | None, key: str) -> int | None:
    """The version a request with routing key `key` is meant for: the canary's, when its key
    falls under the canary's share; None (production) otherwise, or with no canary."""
    if canary is None:
        return None
    version, share = canary
    return version if position(key) < share else None
