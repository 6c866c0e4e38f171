# kubetune developer commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test prometheus crds bench-runner clean

# torch comes from the pinned CPU wheel (see constraints.txt); everything else from the pins.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[cluster,trainer,dev]"
	touch $@

## run: a real study of the reference PyTorch trainer on this machine (examples/digits)
run: $(STAMP)
	$(BIN)/kubetune run examples/digits/study.yaml

## test: the whole test suite (installs Debian's prometheus for the tests that scrape for real)
test: $(STAMP) prometheus
	$(BIN)/python -m pytest

prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; \
	  else echo "prometheus is not installed: run 'sudo apt-get install prometheus' (tests that need it are skipped)"; fi; }

## crds: regenerate crds/ from the API models
crds: $(STAMP)
	$(BIN)/kubetune crds --output-dir crds

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[cluster,trainer,dev,bench]"
	touch $@

## bench-runner: the local runner's own overhead per trial, beside a bare loop and Optuna
bench-runner: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_runner.py

## bench-strategies: sample efficiency and suggestion latency of the strategies beside Optuna's (~45 min on 2 cores)
bench-strategies: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_strategies.py

clean:
	rm -rf $(VENV) kubetune-runs .pytest_cache
