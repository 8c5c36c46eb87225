# syntax=docker/dockerfile:1
# One image for the four services; the command picks one:
#   docker run streamops streamops ingestor | trainer | predictor | gateway
# deploy/compose.yml runs them all (with Redis, MLflow, Prometheus and Grafana).

# Both stages must use the same Python: the venv is copied from one to the other and its
# interpreter links point at the base image's python.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project and its dependencies in a venv ------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from pyproject.toml alone: a change to the code does not reinstall them.
# The lightgbm and xgboost extras too: the bundled rentals example trains with LightGBM, and a
# replica loads the models users register with those flavors.
ARG EXTRAS="lightgbm xgboost"
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + [d for e in sys.argv[1:] for d in p['optional-dependencies'][e]]))" $EXTRAS > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself (README.md: pyproject.toml names it as the package's readme).
COPY README.md ./
COPY shared ./shared
COPY ingestor ./ingestor
COPY trainer ./trainer
COPY predictor ./predictor
COPY gateway ./gateway
COPY streamops ./streamops
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && streamops --help > /dev/null

# --- runtime: the venv, the dataset specs, a non-root user ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed uid/gid, so volume ownership is the same on every rebuild. The data directories are
# created here, owned by that user: an empty named volume mounted on them copies this ownership.
# libgomp1: OpenMP, which LightGBM's wheel links to instead of bundling it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 streamops \
    && useradd --system --uid 10001 --gid streamops --create-home --home-dir /home/streamops \
       --shell /usr/sbin/nologin streamops \
    && install -d -o streamops -g streamops /data/feature-store /data/inbox

COPY --from=build /opt/venv /opt/venv
# Dataset specs and the bundled sample. The project is installed as a regular package, so the
# settings' default (the repository's datasets/) does not exist here: STREAMOPS_DATASETS_DIR
# below points at this copy.
COPY datasets /app/datasets
WORKDIR /app

# Where things are in this image; deploy/compose.yml adds where Redis and MLflow are.
# The gateway listens on every interface (the default, 127.0.0.1, is unreachable from outside
# a container). GUNICORN_CMD_ARGS: gunicorn's worker heartbeat file on a tmpfs, as gunicorn
# advises for containers (on the overlay filesystem a heartbeat can stall a worker).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMOPS_DATASETS_DIR=/app/datasets \
    STREAMOPS_FEATURE_STORE_ROOT=/data/feature-store \
    STREAMOPS_INGESTOR_DATA_ROOTS=/app/datasets,/data/inbox \
    STREAMOPS_PREDICTOR_SCORE_ROOTS=/app/datasets,/data/inbox \
    STREAMOPS_GATEWAY_INBOX=/data/inbox \
    STREAMOPS_GATEWAY_HOST=0.0.0.0 \
    STREAMOPS_GATEWAY_PORT=8000 \
    GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm"

USER 10001:10001

# 8000: the gateway (HTTP API and its /metrics); 9100: the other services' /metrics when
# STREAMOPS_METRICS_PORT=9100 (deploy/compose.yml sets it).
EXPOSE 8000 9100

# SIGTERM is the graceful stop of every service: FastStream finishes the message in hand, and
# `streamops gateway` execs gunicorn (it becomes this process, so it receives the signal), which
# drains its uvicorn workers within --graceful-timeout (gateway/serve.py: GRACEFUL_TIMEOUT_S,
# 20 s). Give the container longer than that before SIGKILL: deploy/compose.yml sets
# stop_grace_period 30s; with `docker run`, use --stop-timeout 30.
STOPSIGNAL SIGTERM

# No HEALTHCHECK here: the services answer on different ports (the gateway's /healthz on 8000,
# the others' /metrics on 9100); deploy/compose.yml gives each its own.
CMD ["streamops", "gateway"]
