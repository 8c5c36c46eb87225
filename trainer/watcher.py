"""Alias moves made outside streamops (MLflow UI, API) reach serving as `model-promoted`.

Decision: a registry watcher, not MLflow webhooks. Webhooks (MLflow 3.3+) are experimental,
need a SQL backend and a server that can reach the trainer over HTTP, and lose what happens
while the receiver is down. The watcher polls every few seconds (STREAMOPS_TRAINER_WATCH_S)
and compares each model's `production` alias with the last version streamops itself put
there (the model's `streamops.production_history` tag): a difference seen on two polls in a
row is an external move (streamops' own promote writes the history first and the alias a
moment later, so one poll may catch it in between). Several trainers may watch: the event
id is derived from the move, so consumers drop the copies.
"""

from __future__ import annotations

from shared.events import ModelPromoted, derived_event_id
from shared.promotion import PRODUCTION
from shared.registry import Registry


def external_moves(registry: Registry, suspects: dict[str, int]) -> list[ModelPromoted]:
    """The `production` moves not made by streamops since the last call. `suspects` carries
    what one poll saw to the next."""
    moves = []
    for name in registry.model_names():
        current = registry.alias(name, PRODUCTION)
        history = registry.history(name)
        last = history[-1] if history else None
        if current is None or current == last:
            suspects.pop(name, None)
            continue
        if suspects.get(name) != current:
            suspects[name] = current  # seen once: wait for the next poll
            continue
        suspects.pop(name)
        registry.set_history(name, [*history, current])
        moves.append(
            ModelPromoted(
                event_id=derived_event_id(ModelPromoted.stream, name, current, last, "external"),
                model_name=name,
                version=current,
                previous_version=last,
                reason="external",
            )
        )
    return moves
