# The README's two commands: `make run` and `make test`. Both set everything up first (idempotent).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
CONFIG  ?= configs/demo.yaml
PYTEST_ARGS ?=

# Everything local and embedded: Prefect's own SQLite under .prefect/, no telemetry, a patient first start.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_LOGGING_LEVEL ?= INFO
export PYTHONUNBUFFERED := 1

.PHONY: setup run test test-fast bench quality clean help

help:
	@echo "make run   - set up .venv and run the whole pipeline on the offline demo dataset"
	@echo "make test  - set up .venv and run the test suite"
	@echo "make bench - run benchmarks/ (sampling, training)"
	@echo "make quality - real-video benchmark: default recipe vs frame-mlp vs single frame vs motion reference, 3 seeds"

# torch first and pinned: an unpinned torch (direct or transitive) pulls several GB of CUDA wheels. Then the tested
# versions of what pyproject.toml leaves open (constraints.txt: yt-dlp), so the tests run on what they were written
# for. pip's own output goes to $(VENV)/setup.log (its tail is shown when a step fails), so the first `make run`
# prints the pipeline, not the installer.
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) (pip's output: $(VENV)/setup.log)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --upgrade pip && \
	   $(BIN)/python -m pip install torch==2.13.0 && \
	   $(BIN)/python -m pip install -c constraints.txt -e '.[dev]'; } > $(VENV)/setup.log 2>&1 || \
	 { tail -n 25 $(VENV)/setup.log; echo "make: setting up $(VENV) failed: see $(VENV)/setup.log"; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

run: setup
	@test -f data/demo-source/annotations.csv || $(BIN)/vivit demo-data --out data/demo-source
	$(BIN)/vivit run --config $(CONFIG)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/training.py

quality: setup  # QUALITY_ARGS="--config my.yaml --seeds 0" for another job
	$(BIN)/python benchmarks/quality.py $(QUALITY_ARGS)

clean:
	rm -rf data .prefect mlruns .mlflow .pytest_cache
