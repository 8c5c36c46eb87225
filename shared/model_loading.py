"""Loading a registered model version from MLflow, whatever its flavor, under a trust policy.

The policy is decided from the version's MLmodel file alone (YAML, read without loading
anything), before any artifact is deserialised: which flavor to load it through (the first of
the allowed flavors the model has) and whether that loader unpickles code. Only then are the
artifacts downloaded and the model loaded.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from shared.compiling import ONNX_ARTIFACT, VERDICT_TAG, VERIFIED
from shared.errors import ModelRefused
from shared.settings import DEFAULT_FLAVORS

PICKLE_SETTING = "STREAMOPS_PREDICTOR_ALLOW_PICKLE"
GENERIC = "python_function"
NATIVE_FLAVORS = frozenset(DEFAULT_FLAVORS) - {GENERIC}
# Formats each native loader reads without unpickling: skops (an allow-list of types), and the
# boosters' own files (lightgbm's model.lgb text, xgboost's ubj/json and legacy binary).
SKOPS = "skops"
XGBOOST_NATIVE = frozenset({"ubj", "json", "xgb", "deprecated"})
LIGHTGBM_BOOSTER = "lightgbm.basic.Booster"


@dataclass(frozen=True)
class LoadPolicy:
    """What a caller trusts: the flavors it loads, in order of preference, and pickles; and
    whether it wants the version's compiled graph too (an ONNX file is data, run by
    onnxruntime: no code of the artifact's runs when it is loaded)."""

    flavors: tuple[str, ...] = DEFAULT_FLAVORS
    allow_pickle: bool = False
    compiled: bool = False


# The trainer's own champion, evaluated in process: anything it logged may be loaded.
PERMISSIVE = LoadPolicy(DEFAULT_FLAVORS, allow_pickle=True)


@dataclass(frozen=True)
class Decision:
    """How a model will be loaded: through `flavor`, unpickling code or not."""

    flavor: str
    pickled: bool


@dataclass(frozen=True)
class LoadedModel:
    """A model version loaded for use: the object to call, and what its MLmodel said."""

    flavor: str
    signature: Any  # mlflow.models.ModelSignature | None
    model: Any
    pickled: bool  # whether loading it unpickled code (cloudpickle, pickle)
    example: Any = None  # the input example logged with the model (a DataFrame), if any
    # The version's compile verdict (shared/compiling.py), None for a version that has none
    # (registered outside streamops); and its ONNX graph when the verdict is `verified`.
    verdict: str | None = None
    onnx: bytes | None = None
    # The version's MLflow run, and its tags (the trainer's record the dataset it came from).
    run_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def decide(flavors: dict[str, dict[str, Any]], policy: LoadPolicy) -> Decision:
    """The flavor to load a model with `flavors` (its MLmodel's) through, and whether that
    unpickles code; ModelRefused when the policy forbids it."""
    chosen = next((f for f in policy.flavors if f in candidates(flavors)), None)
    if chosen is None:
        named = sorted(f for f in flavors if f != GENERIC) or sorted(flavors) or ["none"]
        raise ModelRefused(
            f"flavor {', '.join(named)} is not allowed; allowed: {', '.join(policy.flavors)} "
            "(STREAMOPS_PREDICTOR_FLAVORS)"
        )
    pickled, why = unpickles(chosen, flavors)
    if pickled and not policy.allow_pickle:
        raise ModelRefused(
            f"loading it through {chosen} would unpickle code ({why}); pickles are not allowed "
            f"here: set {PICKLE_SETTING}=true to trust them"
        )
    return Decision(chosen, pickled)


def candidates(flavors: dict[str, dict[str, Any]]) -> list[str]:
    """The flavors a model may be loaded through. Every MLflow model has python_function
    besides its own flavor: for a model of a native flavor streamops knows, only that flavor
    counts, so leaving xgboost out of the allow-list is not undone by its pyfunc wrapper.
    Custom pyfunc models, and models of flavors streamops has no native loader for, go through
    python_function."""
    native = [f for f in flavors if f in NATIVE_FLAVORS]
    return native or list(flavors)


def unpickles(flavor: str, flavors: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """Whether the loader of `flavor` unpickles code for this model, and what the format is.
    Anything not known to be safe counts as a pickle."""
    conf = flavors.get(flavor) or {}
    if flavor == "sklearn":
        fmt = str(conf.get("serialization_format", "pickle"))  # MLflow's own default
        return fmt != SKOPS, f"serialization_format {fmt}"
    if flavor == "lightgbm":
        model_class = str(conf.get("model_class", LIGHTGBM_BOOSTER))
        if not model_class.startswith("lightgbm."):  # imported by name when loading
            return True, f"model_class {model_class} is not lightgbm's"
        if model_class == LIGHTGBM_BOOSTER:
            return False, "a Booster in lightgbm's text format"
        fmt = str(conf.get("serialization_format", "cloudpickle"))
        return fmt != SKOPS, f"serialization_format {fmt}"
    if flavor == "xgboost":
        model_class = str(conf.get("model_class", "xgboost.core.Booster"))
        if not model_class.startswith("xgboost."):  # imported and built by name
            return True, f"model_class {model_class} is not xgboost's"
        fmt = str(conf.get("model_format", "xgb"))
        return fmt not in XGBOOST_NATIVE, f"model_format {fmt}"
    if flavor == GENERIC:
        return _pyfunc_unpickles(conf)
    return True, f"flavor {flavor} is not known to load safely"


def _pyfunc_unpickles(conf: dict[str, Any]) -> tuple[bool, str]:
    """python_function is chosen only for models with no native flavor streamops knows (see
    `candidates`): a custom python_model, a model from code, another library's loader. None
    of them is known to load without running the model's code."""
    if "python_model" in conf or "cloudpickle_version" in conf:
        return True, "a python_model pickled with cloudpickle"
    return True, f"loader_module {conf.get('loader_module')!r} is not known to load safely"


def check_source(uri: str, tracking_uri: str) -> None:
    """Models come only from the configured registry: a version whose source is a path on
    this host (anyone who can register a version could name any file) is refused, unless
    the registry itself is local."""
    scheme = urlparse(uri).scheme
    local_registry = urlparse(tracking_uri).scheme in ("", "file", "sqlite")
    if scheme in ("", "file") and not local_registry:
        raise ModelRefused(f"its artifacts are at {uri}, a local path, not in the registry")


def load_version(
    client: Any, tracking_uri: str, name: str, version: int, policy: LoadPolicy = PERMISSIVE
) -> LoadedModel:
    """Version `version` of `name`, through this registry's server, not MLflow's global
    tracking URI (which a service configured with STREAMOPS_MLFLOW_TRACKING_URI alone never
    sets): `models:/...` would silently look in a local ./mlflow.db instead."""
    import mlflow.artifacts
    from mlflow.models import Model

    described = client.get_model_version(name, str(version))
    uri = client.get_model_version_download_uri(name, str(version))
    check_source(uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="streamops-mlmodel-") as tmp:
        # The MLmodel first, alone: the decision is made before the model is even fetched.
        mlmodel = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri.rstrip('/')}/MLmodel", dst_path=tmp, tracking_uri=tracking_uri
        )
        flavors = Model.load(mlmodel).flavors
    decision = decide(flavors, policy)
    with _model_dir(decision.flavor, flavors) as where:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=where, tracking_uri=tracking_uri
        )
        meta = Model.load(local)
        decision = decide(meta.flavors, policy)  # the files fetched are the ones judged
        model = _load(decision.flavor, local)
        example = _example(meta, local)
    verdict, onnx = (
        _compiled(client, tracking_uri, name, version) if policy.compiled else (None, None)
    )
    return LoadedModel(
        decision.flavor,
        meta.signature,
        model,
        decision.pickled,
        example,
        verdict,
        onnx,
        run_id=described.run_id or "",
        tags=dict(described.tags or {}),
    )


def _compiled(
    client: Any, tracking_uri: str, name: str, version: int
) -> tuple[str | None, bytes | None]:
    """The version's compile verdict and, when verified, its ONNX graph from its run. A graph
    that cannot be fetched is a refusal to serve compiled, never a failed load: the native
    model serves."""
    import mlflow.artifacts

    found = client.get_model_version(name, str(version))
    verdict = (found.tags or {}).get(VERDICT_TAG)
    if verdict != VERIFIED or not found.run_id:
        return verdict, None
    try:
        with tempfile.TemporaryDirectory(prefix="streamops-onnx-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=found.run_id,
                artifact_path=ONNX_ARTIFACT,
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
            with open(path, "rb") as handle:
                return verdict, handle.read()
    except Exception as exc:  # deleted, or the artifact store unreachable for this file
        return f"refused: its graph cannot be read: {type(exc).__name__}: {exc}"[:500], None


@contextlib.contextmanager
def _model_dir(flavor: str, flavors: dict[str, dict[str, Any]]) -> Iterator[str]:
    """Where the model's files go. A model that ships code (code_paths, put on sys.path) or
    goes through python_function (its context's artifacts are paths into this directory) may
    read those files after loading, a lazy import or a lookup in predict: its directory is kept
    for the life of the process. The others are read whole by their loader: removed after."""
    keeps = flavor == GENERIC or bool((flavors.get(flavor) or {}).get("code"))
    if keeps:
        yield tempfile.mkdtemp(prefix="streamops-model-")
        return
    with tempfile.TemporaryDirectory(prefix="streamops-model-") as tmp:
        yield tmp


def _load(flavor: str, local: str) -> Any:
    """Natively where a flavor is named (its loader puts the model's code_paths on sys.path);
    python_function otherwise."""
    if flavor == "sklearn":
        import mlflow.sklearn

        return mlflow.sklearn.load_model(local)
    if flavor == "lightgbm":
        import mlflow.lightgbm

        return mlflow.lightgbm.load_model(local)
    if flavor == "xgboost":
        import mlflow.xgboost

        return mlflow.xgboost.load_model(local)
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(local)


def _example(meta: Any, local: str) -> Any:
    """The input example logged with the model, if it has one (a warm-up that looks like
    real traffic); None when it has none or it cannot be read."""
    try:
        return meta.load_input_example(local)
    except Exception:
        return None
