"""The model registry port and its MLflow adapter (aliases, not the deprecated stages)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.events import Lineage
from shared.model_loading import PERMISSIVE, LoadedModel, LoadPolicy, load_version
from shared.model_logging import DRIFT_ARTIFACT, TrainingRecord, log_training

__all__ = [
    "CANARY",
    "CHALLENGER",
    "DRIFT_ARTIFACT",
    "PRODUCTION",
    "TAG",
    "Canary",
    "Challenger",
    "LoadPolicy",
    "LoadedModel",
    "MlflowRegistry",
    "RegisteredVersion",
    "Registry",
    "ServingRegistry",
    "TrainingRecord",
]

TAG = "streamops."
HISTORY_TAG = f"{TAG}production_history"
# The rollout guard's verdict on a version it watched (docs/rollout.md).
GUARD_TAG = f"{TAG}guard"
PRODUCTION = "production"
# The version shadowing production (docs/rollout.md): every replica loads it and predicts a
# sample of the online requests with it too, after their answers are sent.
CHALLENGER = "challenger"
SHADOW_SAMPLE_TAG = f"{TAG}shadow_sample"
# The version a share of the online requests is routed to (docs/rollout.md): every replica
# loads it, and the gateways send it the requests whose routing key falls in its percent.
CANARY = "canary"
CANARY_PERCENT_TAG = f"{TAG}canary_percent"
# A canary aliased with no readable percent (in the MLflow UI, say) takes this share.
DEFAULT_CANARY_PERCENT = 10.0
# Registered models read per search_registered_models page.
PAGE = 1000


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version as streamops sees it."""

    name: str
    version: int
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Challenger:
    """A model's `challenger` alias, and the share of online requests it shadows (the model's
    `streamops.shadow_sample` tag; None when unset or unreadable: the replicas' default)."""

    version: int
    sample: float | None = None

    @property
    def share(self) -> float | None:
        return self.sample


@dataclass(frozen=True)
class Canary:
    """A model's `canary` alias, and the percent of online requests routed to it (the model's
    `streamops.canary_percent` tag; None when unset or unreadable: DEFAULT_CANARY_PERCENT)."""

    version: int
    percent: float | None = None

    @property
    def share(self) -> float:
        return (self.percent or DEFAULT_CANARY_PERCENT) / 100


class Registry(Protocol):
    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None: ...

    def log(self, record: TrainingRecord) -> RegisteredVersion: ...

    def alias(self, name: str, alias: str) -> int | None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def load(self, name: str, version: int) -> Any: ...

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None: ...

    def history(self, name: str) -> list[int]: ...

    def set_history(self, name: str, versions: list[int]) -> None: ...

    def versions(self, name: str) -> list[RegisteredVersion]: ...

    def aliases(self, name: str) -> dict[str, int]: ...

    def model_names(self) -> list[str]: ...


class ShadowRegistry(Protocol):
    """What setting a challenger needs (shared/promotion.py)."""

    def alias(self, name: str, alias: str) -> int | None: ...

    def set_shadow(self, name: str, version: int, sample: float) -> None: ...

    def end_shadow(self, name: str) -> None: ...


class CanaryRegistry(Protocol):
    """What setting a canary needs (shared/promotion.py)."""

    def alias(self, name: str, alias: str) -> int | None: ...

    def set_canary(self, name: str, version: int, percent: float) -> None: ...

    def end_canary(self, name: str) -> None: ...


class TrainingRegistry(Registry, ShadowRegistry, Protocol):
    """What training needs: the registry, and setting a challenger (a version that must
    shadow production before it is promoted)."""


class GuardRegistry(Registry, ShadowRegistry, CanaryRegistry, Protocol):
    """What the rollout guard needs: moving production and the canary, and saying its verdict
    on a version (a version tag, shown by `streamops models`)."""

    def tag_version(self, name: str, version: int, key: str, value: str) -> None: ...

    def canaries(self) -> dict[str, Canary]: ...

    def challengers(self) -> dict[str, Challenger]: ...


class GatewayRegistry(Registry, ShadowRegistry, CanaryRegistry, Protocol):
    """What the gateway's model routes need: the registry, and setting challengers and
    canaries."""


class ServingRegistry(Registry, Protocol):
    """What a predictor replica needs besides: every model in production at once, and loading
    under its trust policy."""

    def production_versions(self) -> dict[str, int]: ...

    def challengers(self) -> dict[str, Challenger]: ...

    def canaries(self) -> dict[str, Canary]: ...

    def load_model(self, name: str, version: int, policy: LoadPolicy) -> LoadedModel: ...


class MlflowRegistry:
    """The Registry on an MLflow tracking server. Runs are logged with MLflow's fluent API,
    so the process must have called `mlflow.set_tracking_uri` (the trainer's worker does)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None:
        found = self.client.search_model_versions(
            f"name = '{_quote(name)}' and tags.`{tag}` = '{_quote(value)}'"
        )
        if not found:
            return None
        return self._describe(min(found, key=lambda mv: int(mv.version)))

    def log(self, record: TrainingRecord) -> RegisteredVersion:
        version, run_id = log_training(self.client, record)
        return RegisteredVersion(
            record.model_name, version, run_id, dict(record.tags), dict(record.metrics)
        )

    def alias(self, name: str, alias: str) -> int | None:
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def load(self, name: str, version: int) -> Any:
        """The version's model, ready to predict (the trainer's champion: it trusts what it
        logged itself)."""
        return self.load_model(name, version, PERMISSIVE).model

    def load_model(self, name: str, version: int, policy: LoadPolicy) -> LoadedModel:
        """The version loaded under `policy` (ModelRefused, before anything is deserialised,
        when the policy forbids it)."""
        return load_version(self.client, self.tracking_uri, name, version, policy)

    def production_versions(self) -> dict[str, int]:
        """The `production` version of every registered model that has one: one search (a page
        per thousand models), whose results carry their aliases."""
        found: dict[str, int] = {}
        for model in self._registered_models():
            aliases = model.aliases or {}
            if PRODUCTION in aliases:
                found[model.name] = int(aliases[PRODUCTION])
        return found

    def challengers(self) -> dict[str, Challenger]:
        """The `challenger` of every registered model that has one, with its sample (one
        search, as for production)."""
        return {
            name: Challenger(version, shadow_sample(tag))
            for name, version, tag in self._aliased(CHALLENGER, SHADOW_SAMPLE_TAG)
        }

    def canaries(self) -> dict[str, Canary]:
        """The `canary` of every registered model that has one, with its percent (one
        search)."""
        return {
            name: Canary(version, canary_percent(tag))
            for name, version, tag in self._aliased(CANARY, CANARY_PERCENT_TAG)
        }

    def _aliased(self, alias: str, tag: str) -> Iterator[tuple[str, int, str | None]]:
        """(model, version under `alias`, the model's `tag`) of every model with `alias`."""
        for model in self._registered_models():
            aliases = model.aliases or {}
            if alias in aliases:
                yield model.name, int(aliases[alias]), (model.tags or {}).get(tag)

    def set_shadow(self, name: str, version: int, sample: float) -> None:
        """Make `version` the challenger of `name`, shadowing `sample` of its requests."""
        self._set_aside(name, CHALLENGER, version, SHADOW_SAMPLE_TAG, sample)

    def end_shadow(self, name: str) -> None:
        """No challenger for `name` any more (none: nothing to do)."""
        self._end_aside(name, CHALLENGER)

    def set_canary(self, name: str, version: int, percent: float) -> None:
        """Make `version` the canary of `name`, answering `percent` of its requests."""
        self._set_aside(name, CANARY, version, CANARY_PERCENT_TAG, percent)

    def end_canary(self, name: str) -> None:
        """No canary for `name` any more (none: nothing to do)."""
        self._end_aside(name, CANARY)

    def tag_version(self, name: str, version: int, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, str(version), key, value)

    def _set_aside(self, name: str, alias: str, version: int, tag: str, value: float) -> None:
        # The tag first: a replica that sees the new alias reads its share with it.
        self.client.set_registered_model_tag(name, tag, repr(value))
        self.client.set_registered_model_alias(name, alias, str(version))

    def _end_aside(self, name: str, alias: str) -> None:
        if alias in self.aliases(name):
            self.client.delete_registered_model_alias(name, alias)

    def _registered_models(self) -> Iterator[Any]:
        token: str | None = None
        while True:
            page = self.client.search_registered_models(max_results=PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None:
        """The reference logged with the version's run; None when there is none (a version
        registered outside streamops, or before drift existed)."""
        run_id = self.client.get_model_version(name, str(version)).run_id
        if not run_id:
            return None
        if DRIFT_ARTIFACT not in {f.path for f in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory(prefix="streamops-drift-") as tmp:
            local = self.client.download_artifacts(run_id, DRIFT_ARTIFACT, dst_path=tmp)
            found: dict[str, Any] = json.loads(Path(local).read_text())
        return found

    def history(self, name: str) -> list[int]:
        tags = self.client.get_registered_model(name).tags
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    def set_history(self, name: str, versions: list[int]) -> None:
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(versions))

    def versions(self, name: str) -> list[RegisteredVersion]:
        found = self.client.search_model_versions(f"name = '{_quote(name)}'")
        return sorted((self._describe(mv) for mv in found), key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        return {
            alias: int(v) for alias, v in self.client.get_registered_model(name).aliases.items()
        }

    def model_names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def _describe(self, mv: Any) -> RegisteredVersion:
        metrics = self.client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        return RegisteredVersion(
            mv.name, int(mv.version), mv.run_id or "", dict(mv.tags), dict(metrics)
        )


def lineage_of(run_id: str, tags: dict[str, str]) -> Lineage:
    """A version's lineage, from its run and the tags the trainer sets (empty fields for a
    version registered elsewhere)."""
    version = tags.get(f"{TAG}dataset_version", "")
    return Lineage(
        run_id=run_id,
        dataset=tags.get(f"{TAG}dataset", ""),
        dataset_version=int(version) if version.isdigit() else None,
        content_hash=tags.get(f"{TAG}content_hash", ""),
    )


def shadow_sample(raw: str | None) -> float | None:
    """A `streamops.shadow_sample` tag as a share in (0, 1]; None when unset or not one."""
    return _within(raw, 1)


def canary_percent(raw: str | None) -> float | None:
    """A `streamops.canary_percent` tag as a percent in (0, 100]; None when unset or not one."""
    return _within(raw, 100)


def _within(raw: str | None, top: float) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 < value <= top else None


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
