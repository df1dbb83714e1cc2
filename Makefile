# The front door: one target per user action. Every target depends on the install stamp, so
# `make sweep` and `make test` each work as the first command on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= quickstart
TRIALS ?=
PORT   ?= 5000
# Servers listen on loopback only; HOST=0.0.0.0 exposes them (workbench warns when it does).
HOST   ?= 127.0.0.1
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
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

compare: $(STAMP)  ## compare the latest SPEC sweep's trials; every format under reports/
	$(BIN)/workbench compare --experiment $(SPEC) --sweep latest --all-formats reports

report: $(STAMP)  ## interactive HTML report on the latest SPEC sweep (reports/$(SPEC)-report.html)
	$(BIN)/workbench report --experiment $(SPEC) --sweep latest

promote: $(STAMP)  ## register SPEC's best finished run (by validation objective) as models:/$(NAME)@champion
	$(BIN)/workbench promote --name $(NAME) --experiment $(SPEC) --tracking-uri $(TRACKING_URI)

serve: $(STAMP)  ## serve models:/$(NAME)@champion on http://$(HOST):$(SERVE_PORT) (POST /invocations)
	$(BIN)/workbench serve model --model $(NAME) --host $(HOST) --port $(SERVE_PORT) --tracking-uri $(TRACKING_URI)

dashboard: $(STAMP)  ## optuna-dashboard on the study storage, http://$(HOST):8080
	$(BIN)/workbench serve dashboard --host $(HOST) --port 8080

# The benchmarks' own extra (ImageDataGenerator's image loading), installed on first `make bench`.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## side-by-side speed and memory benchmarks -> bench/results/ (QUICK=1: fewer repetitions)
	$(BIN)/python bench/bench.py $(if $(QUICK),--quick)

ui: $(STAMP)  ## browse runs in the MLflow UI on http://$(HOST):$(PORT)
	$(BIN)/workbench serve ui --host $(HOST) --port $(PORT) --tracking-uri $(TRACKING_URI)

clean-runs:  ## delete every local run and study (asks first)
	@read -p "delete mlruns/ (all local runs and studies)? [y/N] " ok && [ "$$ok" = y ] && \
		find mlruns -mindepth 1 ! -name .gitkeep -delete || true
