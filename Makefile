# streamops: `make demo` runs the main job end to end, `make test` runs the whole suite.
# Both install what they need first (`make deps`: Debian packages; `make bootstrap`: .venv);
# nothing needs to be started by hand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

IMAGE ?= streamops:latest

.PHONY: deps deps-test deps-bench bootstrap test test-native test-fast lint typecheck gate image demo bench bench-batch bench-serve clean

# Machine-level prerequisites, from Debian's packages when missing (as root; otherwise the
# one command to run): redis-server for the demo; prometheus and chromium for the tests too;
# wrk for the serving benchmark. See scripts/system-deps.sh.
deps:
	bash scripts/system-deps.sh run

deps-test:
	bash scripts/system-deps.sh run test

deps-bench:
	bash scripts/system-deps.sh run bench

bootstrap: $(STAMP)

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,lightgbm,xgboost]'
	touch $@

# The whole suite: unit, service (in-memory broker), integration (real Redis, started by the
# fixtures) and e2e (services as processes).
test: deps-test bootstrap
	$(PY) -m pytest
	$(MAKE) test-native

# The e2e serving tests again with every model served natively (no ONNX): the compiled path
# must never be the only one that works (docs/serving.md, compiled serving). The prediction
# log's, labels', replay's and the guard's tests are left out of this run: they judge what was
# answered, whichever runtime answered it, and the guard's alone take a minute and a half.
NATIVE_SKIP = not logged and not labels and not guard
test-native: deps-test bootstrap
	STREAMOPS_PREDICTOR_RUNTIME=native $(PY) -m pytest tests/e2e/test_serving_processes.py \
		-k "$(NATIVE_SKIP)"

# Unit, service and deploy-config tests: no servers (the deploy checks run promtool).
test-fast: deps-test bootstrap
	$(PY) -m pytest tests/unit tests/service tests/deploy

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

# The model quality gate: every bundled dataset with a training section trains on its sample,
# in-process (no MLflow, no broker), and must pass its spec's thresholds; exit 1 if one fails.
gate: bootstrap
	$(PY) -m streamops.gate

# The container image of the four services (Dockerfile). Needs a Docker engine; the compose
# file builds the same image: docker compose -f deploy/compose.yml up -d --build.
image:
	docker build -t $(IMAGE) .

demo: deps bootstrap
	$(PY) -m streamops.demo $(ARGS)

bench: bootstrap
	$(PY) bench/ingest.py

# Batch scoring through Redis Streams (two predictor processes) against in-process predict.
bench-batch: deps bootstrap
	$(PY) bench/batch.py

# The gateway against `mlflow models serve` under wrk (docs/benchmarks.md).
bench-serve: deps-bench bootstrap
	$(PY) bench/serve.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis
