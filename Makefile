# kubetune developer commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test prometheus crds bench-runner bench-operator clean

# Every package at the version in constraints.txt. torch==2.13.0 is installed first and alone:
# on our machines pip finds its CPU wheel locally; elsewhere add
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
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

## bench-operator: the kopf operator against the emulated API: study -> first Job, pod done -> next Job, requests per trial, memory with 1,000 live trials (~1 min)
bench-operator: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_operator.py

## bench-strategies: sample efficiency (10 seeds, 30 trials) and suggestion latency of the strategies beside Optuna's (~25 min on 2 cores)
bench-strategies: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_strategies.py

clean:
	rm -rf $(VENV) kubetune-runs .pytest_cache
