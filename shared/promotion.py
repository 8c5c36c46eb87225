"""Moving the `production` alias (promotion and rollback), the `challenger` alias
(shadowing) and the `canary` alias, each one event for serving."""

from __future__ import annotations

from shared.errors import InvalidCanary, InvalidShadow, NothingToRollBack
from shared.events import GuardBreach, ModelPromoted, PromotionReason, derived_event_id
from shared.registry import CANARY, CHALLENGER, CanaryRegistry, Registry, ShadowRegistry

PRODUCTION = "production"


def promote(registry: Registry, name: str, version: int, reason: PromotionReason) -> ModelPromoted:
    """Point `production` at `version` and record it in the model's production history.
    Promoting the version already in production changes nothing and reports it again."""
    previous = registry.alias(name, PRODUCTION)
    if previous != version:
        # History first: the watcher (trainer.watcher) reads "alias differs from the history"
        # as a move made outside streamops, and waits a poll before believing it.
        history = registry.history(name)
        if not history or history[-1] != version:
            registry.set_history(name, [*history, version])
        registry.set_alias(name, PRODUCTION, version)
    return ModelPromoted(
        event_id=derived_event_id(ModelPromoted.stream, name, version, previous, reason),
        model_name=name,
        version=version,
        previous_version=previous if previous != version else None,
        reason=reason,
    )


def rollback(
    registry: Registry,
    name: str,
    reason: PromotionReason = "rollback",
    breaches: tuple[GuardBreach, ...] = (),
) -> ModelPromoted:
    """Back to the version that was in production before the current one (`reason` guard:
    the rollout guard's doing, `breaches` why)."""
    current = registry.alias(name, PRODUCTION)
    history = registry.history(name)
    if current is not None and history and history[-1] == current:
        history = history[:-1]
    earlier = [v for v in history if v != current]
    if current is None or not earlier:
        raise NothingToRollBack(f"model {name!r} has no earlier production version")
    target = earlier[-1]
    registry.set_history(name, history[: len(history) - history[::-1].index(target)])
    registry.set_alias(name, PRODUCTION, target)
    return ModelPromoted(
        event_id=derived_event_id(ModelPromoted.stream, name, target, current, reason),
        model_name=name,
        version=target,
        previous_version=current,
        reason=reason,
        breaches=breaches,
    )


def restore(
    registry: Registry, name: str, bad: int, to: int, breaches: tuple[GuardBreach, ...]
) -> ModelPromoted:
    """The rollout guard's undo: production from `bad` back to `to`, the version that answered
    before it (not always the alias before it: that one may never have served, a corrupt
    version the replicas refused, say). The history is cut back to `to`'s last place in it."""
    history = registry.history(name)
    last = len(history) - history[::-1].index(to) if to in history else None
    registry.set_history(name, history[:last] if last is not None else [*history, to])
    registry.set_alias(name, PRODUCTION, to)
    return ModelPromoted(
        event_id=derived_event_id(ModelPromoted.stream, name, to, bad, "guard"),
        model_name=name,
        version=to,
        previous_version=bad,
        reason="guard",
        breaches=breaches,
    )


def shadow(
    registry: ShadowRegistry,
    name: str,
    version: int,
    sample: float,
    reason: PromotionReason = "manual",
) -> ModelPromoted:
    """Make `version` the challenger of `name`, predicting `sample` of its online requests
    after production answered them (docs/rollout.md). InvalidShadow when it is production's
    own version, or `sample` is not in (0, 1]. Reason auto: the trainer's, for a version that
    must earn its promotion in shadow (the guard promotes it on the evidence)."""
    if not 0 < sample <= 1:
        raise InvalidShadow(f"a shadow sample is a share in (0, 1], not {sample}")
    if registry.alias(name, PRODUCTION) == version:
        raise InvalidShadow(f"{name} v{version} is in production: a challenger is another")
    previous = registry.alias(name, CHALLENGER)
    registry.set_shadow(name, version, sample)
    event = _aliased(name, version, previous, CHALLENGER)
    return event if reason == "manual" else event.model_copy(update={"reason": reason})


def canary(registry: CanaryRegistry, name: str, version: int, percent: float) -> ModelPromoted:
    """Make `version` the canary of `name`, answering `percent` of its online requests
    (docs/rollout.md). InvalidCanary when it is production's own version, or `percent` is not
    in (0, 100]."""
    if not 0 < percent <= 100:
        raise InvalidCanary(f"a canary's percent is in (0, 100], not {percent}")
    if registry.alias(name, PRODUCTION) == version:
        raise InvalidCanary(f"{name} v{version} is in production: a canary is another version")
    previous = registry.alias(name, CANARY)
    registry.set_canary(name, version, percent)
    # Its percent in the id too: a step to another percent is news, the same one said again
    # is not.
    return _aliased(name, version, previous, CANARY, repr(float(percent)))


def end_canary(
    registry: CanaryRegistry,
    name: str,
    reason: PromotionReason = "manual",
    breaches: tuple[GuardBreach, ...] = (),
) -> ModelPromoted | None:
    """No canary for `name` any more; the event that says so (every replica drops it, and the
    gateways route nothing more to it), or None when there was none."""
    version = registry.alias(name, CANARY)
    if version is None:
        return None
    registry.end_canary(name)
    return ModelPromoted(
        event_id=derived_event_id(ModelPromoted.stream, name, version, "withdrawn", reason),
        model_name=name,
        version=version,
        alias=CANARY,
        withdrawn=True,
        reason=reason,
        breaches=breaches,
    )


def _aliased(
    name: str, version: int, previous: int | None, alias: str, *more: str
) -> ModelPromoted:
    """The event of `alias` set on `version` (set again: the same event as before)."""
    before = previous if previous != version else None
    return ModelPromoted(
        event_id=derived_event_id(ModelPromoted.stream, name, version, before, alias, *more),
        model_name=name,
        version=version,
        previous_version=before,
        alias=alias,
        reason="manual",
    )
