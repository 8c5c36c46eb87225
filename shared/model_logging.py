"""Logging a training to MLflow: the run, its lineage, and the model registered as a version.

A scikit-learn-API model (a built-in pipeline, or what an entry point returned) is logged with
mlflow.sklearn in skops format; an `mlflow.pyfunc.PythonModel` with mlflow.pyfunc (cloudpickle,
MLflow's only format for it). The code a model needs to load goes with it: the entry point's
module or package as `code_paths` (MLflow's loaders put them on sys.path), or its installed
distribution, and the libraries the fitted object uses (lightgbm, xgboost...), as pinned pip
requirements.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.compiling import ONNX_ARTIFACT
from shared.errors import EntryPointFailed

log = logging.getLogger(__name__)

# Each feature's training distribution (shared/drift.py), an artifact of the version's run.
DRIFT_ARTIFACT = "drift_reference.json"
# Tagged on the run and the version: how the model's file was written (skops or cloudpickle).
SERIALIZATION_TAG = "streamops.serialization_format"
SKLEARN = "sklearn"
PYFUNC = "python_function"
# What loading any logged model needs, at the versions that trained it.
BASE_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas", "scipy")


@dataclass(frozen=True)
class TrainingRecord:
    """What one training logs: the run, the model and the lineage."""

    experiment: str
    model_name: str
    model: Any
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    input_frame: Any  # pandas DataFrame of the training rows (for lineage and schema)
    input_name: str
    input_source: str
    input_digest: str
    target: str
    example: Any  # a few feature rows
    # The skops types to trust (reviewed, for built-in estimators); None: a model the trainer
    # has just fitted itself, whose types are trusted as skops reports them (or, when skops
    # cannot write it, saved with cloudpickle).
    trusted_types: tuple[str, ...] | None
    # Each feature's training distribution (shared/drift.py), logged beside the model.
    drift_reference: dict[str, Any] | None = None
    flavor: str = SKLEARN  # or python_function, for an mlflow.pyfunc.PythonModel
    code_paths: tuple[str, ...] = ()  # files or directories of code the model needs to load
    requirements: tuple[str, ...] = ()  # `package==version` besides those found in the model
    # The model compiled to ONNX and verified (shared/compiling.py), logged beside it; its
    # verdict is one of `tags`.
    onnx: bytes | None = None


def log_training(client: Any, record: TrainingRecord) -> tuple[int, str]:
    """Log `record` as a run of its experiment and register its model; the version registered
    and the run's id. Runs are logged with
    MLflow's fluent API, so the process must have called `mlflow.set_tracking_uri` (the
    trainer's worker does)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    mlflow.set_experiment(record.experiment)
    with mlflow.start_run(run_name=record.input_name) as run:
        mlflow.log_params(record.params)
        mlflow.log_metrics(record.metrics)
        mlflow.set_tags(record.tags)
        dataset = from_pandas(
            record.input_frame,
            source=record.input_source,
            name=record.input_name,
            targets=record.target,
            digest=record.input_digest[:36],
        )
        mlflow.log_input(dataset, context="training")
        if record.drift_reference is not None:
            mlflow.log_dict(record.drift_reference, DRIFT_ARTIFACT)
        if record.onnx is not None:
            _log_bytes(record.onnx, ONNX_ARTIFACT)
        signature = infer_signature(record.example, predict(record.model, record.example))
        info, serialization = _log_model(record, signature)
        mlflow.set_tag(SERIALIZATION_TAG, serialization)
    version = int(info.registered_model_version)
    for key, value in {**record.tags, SERIALIZATION_TAG: serialization}.items():
        client.set_model_version_tag(record.model_name, str(version), key, value)
    return version, run.info.run_id


def _log_bytes(data: bytes, artifact: str) -> None:
    import mlflow

    directory, _, filename = artifact.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="streamops-artifact-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=directory or None)


def _log_model(record: TrainingRecord, signature: Any) -> tuple[Any, str]:
    """Log and register the model; the logged model's info and its serialization format."""
    import mlflow

    common: dict[str, Any] = {
        "name": "model",
        "signature": signature,
        "input_example": record.example,
        "registered_model_name": record.model_name,
        "code_paths": list(record.code_paths) or None,
    }
    if record.flavor == PYFUNC:
        requirements = requirements_for(
            record.model, record.requirements, ("mlflow", "cloudpickle")
        )
        info = mlflow.pyfunc.log_model(
            python_model=record.model, pip_requirements=requirements, **common
        )
        return info, "cloudpickle"
    trusted = record.trusted_types
    serialization = "skops"
    if trusted is None:
        trusted = skops_types(record.model)
    if trusted is None:
        serialization = "cloudpickle"
        log.warning(
            "%s: skops cannot save this model; saved with cloudpickle (a predictor in "
            "production refuses it unless STREAMOPS_PREDICTOR_ALLOW_PICKLE=true)",
            record.model_name,
        )
    extra = ("cloudpickle",) if serialization == "cloudpickle" else ()
    info = mlflow.sklearn.log_model(
        record.model,
        serialization_format=serialization,
        skops_trusted_types=list(trusted) if trusted is not None else None,
        # Given, not inferred: inferring them loads the model in a subprocess, which
        # took 40 to 90 s of every training here.
        pip_requirements=requirements_for(record.model, record.requirements, extra),
        **common,
    )
    return info, serialization


def skops_types(model: Any) -> tuple[str, ...] | None:
    """The types skops reports untrusted in `model`, trusted because streamops has just fitted
    it and writes the file itself; None when skops cannot save it and load it back."""
    import skops.io

    try:
        data = skops.io.dumps(model)
        untrusted = skops.io.get_untrusted_types(data=data)
        skops.io.loads(data, trusted=untrusted)
    except Exception as exc:  # any type skops does not know how to write or rebuild
        log.info("skops cannot round-trip %s: %s", type(model).__name__, exc)
        return None
    return tuple(untrusted)


def predict(model: Any, rows: Any) -> Any:
    """`model`'s predictions of the example rows, a PythonModel's included."""
    try:
        return predictions(model, rows)
    except Exception as exc:  # the user's model, on the signature's example rows
        raise EntryPointFailed(
            f"the model cannot predict its example rows: {type(exc).__name__}: {exc}"
        ) from exc


def predictions(model: Any, rows: Any) -> Any:
    """`model.predict(rows)`; a PythonModel's is called as MLflow would, without a context
    (it has not been saved yet), with or without the `context` argument it may declare."""
    if not is_python_model(model):
        return model.predict(rows)
    if "context" in inspect.signature(model.predict).parameters:
        return model.predict(None, rows)
    return model.predict(rows)


def is_python_model(model: Any) -> bool:
    """Whether `model` is an `mlflow.pyfunc.PythonModel`, told by its classes' names, so that
    asking needs no `import mlflow` (fitting in CI's gate does without it)."""
    return any(
        c.__name__ == "PythonModel" and c.__module__.startswith("mlflow.pyfunc")
        for c in type(model).__mro__
    )


def requirements_for(
    model: Any, given: tuple[str, ...] = (), extra: tuple[str, ...] = ()
) -> list[str]:
    """Pinned pip requirements: the base set, `extra` packages, the installed distributions
    whose types the fitted object holds (lightgbm, xgboost-cpu, ...), and `given` ones."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    provides = packages_distributions()
    names = [*BASE_REQUIREMENTS, *extra]
    for module in sorted(_modules_in(model)):
        names.extend(provides.get(module, [])[:1])
    pinned: dict[str, str] = {}
    for name in names:
        try:
            pinned.setdefault(name.lower(), f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    for requirement in given:
        pinned[requirement.partition("==")[0].lower()] = requirement
    return list(pinned.values())


def _modules_in(model: Any, depth: int = 8) -> set[str]:
    """The top-level modules of the types in `model`'s object graph (attributes, lists,
    tuples, dicts), down to `depth`; arrays and frames are not walked into."""
    seen: set[int] = set()
    found: set[str] = set()
    pending: list[tuple[Any, int]] = [(model, 0)]
    while pending:
        obj, level = pending.pop()
        if id(obj) in seen or level > depth:
            continue
        seen.add(id(obj))
        found.add(type(obj).__module__.partition(".")[0])
        if isinstance(obj, dict):
            children: list[Any] = [*obj.keys(), *obj.values()]
        elif isinstance(obj, list | tuple | set | frozenset):
            children = list(obj)
        else:
            children = list(getattr(obj, "__dict__", {}).values())
        pending.extend((child, level + 1) for child in children)
    return found
