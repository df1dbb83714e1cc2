# The front door: one target per user action. Every target depends on the install stamp, so
# `make sweep` and `make test` each work as the first command on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= quickstart
TRIALS ?=
PORT   ?= 5000
TRACKING_URI ?= sqlite:///mlruns/mlflow.db

NAME   ?= faces
SERVE_PORT ?= 5001

.PHONY: install sweep run test ui specs compare report promote serve dashboard bench clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dashboard]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install workbench with its test extras

sweep: $(STAMP)  ## run the SPEC sweep (default: the embedded quickstart) and print its leaderboard
	$(BIN)/workbench sweep $(SPEC) $(if $(TRIALS),--trials $(TRIALS))

run: $(STAMP)  ## train one configuration of SPEC
	$(BIN)/workbench run $(SPEC)

specs: $(STAMP)  ## list the experiment registry
	$(BIN)/workbench specs list

test: $(STAMP)  ## run the test suite (fails on any failure, and on zero tests)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

compare: $(STAMP)  ## compare the latest SPEC sweep's trials; every format under reports/
	$(BIN)/workbench compare --experiment $(SPEC) --sweep latest --all-formats reports

report: $(STAMP)  ## interactive HTML report on the latest SPEC sweep (reports/$(SPEC)-report.html)
	$(BIN)/workbench report --experiment $(SPEC) --sweep latest

promote: $(STAMP)  ## register SPEC's best finished run (by validation objective) as models:/$(NAME)@champion
	$(BIN)/workbench promote --name $(NAME) --experiment $(SPEC) --tracking-uri $(TRACKING_URI)

serve: $(STAMP)  ## serve models:/$(NAME)@champion on http://127.0.0.1:$(SERVE_PORT) (POST /invocations)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI=$(TRACKING_URI) $(BIN)/mlflow models serve \
		-m models:/$(NAME)@champion --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

dashboard: $(STAMP)  ## optuna-dashboard on the local study storage, http://127.0.0.1:8080
	$(BIN)/optuna-dashboard $${WORKBENCH_STORAGE:-sqlite:///mlruns/optuna.db} --host 127.0.0.1 --port 8080

bench: $(STAMP)  ## speed and memory benchmarks -> bench/results/latest.json (BENCH_ARGS=--sweep adds the full sweep)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

ui: $(STAMP)  ## browse runs in the MLflow UI on http://127.0.0.1:$(PORT)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning (runs and charts, not the GenAI view)"
	$(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port $(PORT)

clean-runs:  ## delete every local run and study (asks first)
	@read -p "delete mlruns/ (all local runs and studies)? [y/N] " ok && [ "$$ok" = y ] && \
		find mlruns -mindepth 1 ! -name .gitkeep -delete || true
