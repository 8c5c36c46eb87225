"""BentoML as a peer of bench/serve.py: its own venv, and its server as a local process.

BentoML is no dependency of streamops (its pins would fight ours, and users of streamops never
need it): the bench creates a venv for it under `var/bench-venvs/`, once, with the same
versions of the libraries that load and run the model as the interpreter running the bench,
so that both systems run the very same scikit-learn code on the very same fitted pipeline.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from streamops.stack import Stack, free_port, http_ok, wait_for

BENTOML = "bentoml==1.4.40"
# What mlflow.sklearn.load_model and the pipeline need, pinned to the versions in use here.
SAME_AS_HERE = ("scikit-learn", "skops", "numpy", "pandas", "scipy", "protobuf")
BENCH_DIR = Path(__file__).resolve().parent
VENVS = BENCH_DIR.parent / "var" / "bench-venvs"


def requirements() -> list[str]:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in SAME_AS_HERE]
    # The skinny client: the same loader code as the full mlflow, without its server.
    pins.append(f"mlflow-skinny=={importlib.metadata.version('mlflow')}")
    return [BENTOML, *pins]


def venv() -> Path:
    """The venv's directory, created and filled on first use (a minute or two)."""
    wanted = requirements()
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]
    home = VENVS / f"bentoml-{digest}"
    stamp = home / "streamops-requirements.txt"
    if stamp.exists():
        return home
    print(f"creating BentoML's venv {home} ({', '.join(wanted)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *wanted], check=True)
    # Written last: a venv whose install was interrupted is rebuilt next time.
    stamp.write_text("\n".join(wanted) + "\n")
    return home


def start(stack: Stack, model_uri: str, tracking_uri: str, workers: int, path: str) -> str:
    """`bentoml serve` of bench/bentoml_service.py with `workers` worker processes: its URL."""
    home = venv()
    port = free_port()
    argv = [
        str(home / "bin" / "bentoml"),
        "serve",
        "bentoml_service:Baseline",
        "--working-dir",
        str(BENCH_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {
        "PATH": f"{home / 'bin'}:{path}",
        "HOME": str(stack.workdir),  # BentoML keeps its home (~/bentoml) there, not in ours
        "BENTOML_HOME": str(stack.workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BENCH_MODEL_URI": model_uri,
        "BENCH_BENTOML_WORKERS": str(workers),
    }
    stack.spawn("bentoml", argv, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/readyz"), 180, f"bentoml serve ({stack.log('bentoml')})")
    return url
