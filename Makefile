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

.PHONY: install upgrade lock sweep run test ui specs compare report promote serve dashboard bench clean-runs

# Installs are exact: the versions in requirements/lock.txt (resolved from pyproject.toml's ranges,
# with hashes), then workbench itself. UNLOCKED=1 resolves the ranges afresh instead, on purpose.
LOCK       := requirements/lock.txt
BENCH_LOCK := requirements/bench.txt
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(UNLOCKED),1)
	$(BIN)/pip install --quiet -e '.[test,dashboard]'
else
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
endif
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the locked versions with the test extras (UNLOCKED=1: newest in range)

upgrade: $(STAMP)  ## re-resolve the locks to the newest versions pyproject.toml allows, install them, run the tests, say what changed
	cp $(LOCK) $(VENV)/lock.before
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile $(LOCK_FLAGS) --upgrade --extra test --extra dashboard -o $(LOCK) pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --upgrade --extra test --extra dashboard --extra bench -o $(BENCH_LOCK) pyproject.toml
	$(BIN)/python requirements/changes.py $(VENV)/lock.before $(LOCK)
	$(MAKE) test || { echo "the upgraded lock fails the tests: git checkout requirements/ restores the tested one"; exit 1; }
	@echo "tests pass on the upgraded lock: commit requirements/ on its own (an upgrade is a commit)"

lock:  ## re-resolve the locks after a change to pyproject.toml, keeping every pin that still fits
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra test --extra dashboard -o $(LOCK) pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra test --extra dashboard --extra bench -o $(BENCH_LOCK) pyproject.toml

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
$(BENCH_STAMP): $(STAMP) $(BENCH_LOCK)
	$(BIN)/pip install --quiet --require-hashes -r $(BENCH_LOCK)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## side-by-side speed and memory benchmarks -> bench/results/ (QUICK=1: fewer repetitions)
	$(BIN)/python bench/bench.py $(if $(QUICK),--quick)

ui: $(STAMP)  ## browse runs in the MLflow UI on http://$(HOST):$(PORT)
	$(BIN)/workbench serve ui --host $(HOST) --port $(PORT) --tracking-uri $(TRACKING_URI)

clean-runs:  ## delete every local run and study (asks first)
	@read -p "delete mlruns/ (all local runs and studies)? [y/N] " ok && [ "$$ok" = y ] && \
		find mlruns -mindepth 1 ! -name .gitkeep -delete || true
