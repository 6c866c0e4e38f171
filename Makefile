# kubetune developer commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test prometheus crds chart images e2e-kind e2e-kind-clean bench-runner bench-operator bench-strategies bench-stopping bench-lr-range bench-engine clean

# Every package at the version in constraints.txt. torch==2.13.0 is installed first and alone:
# on our machines pip finds its CPU wheel locally; elsewhere add
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[cluster,trainer,dev,plots]"
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

## crds: regenerate crds/ from the API models, and the chart's copies
crds: $(STAMP)
	$(BIN)/kubetune crds --output-dir crds
	cp crds/*.yaml charts/kubetune/crds/

## chart: render and lint the Helm chart with Helm's engine, validate it, run every dashboard query against a real Prometheus
chart: $(STAMP) prometheus
	$(BIN)/python -m pytest tests/test_chart.py tests/test_dashboards.py

IMAGE_TAG ?= 0.1.0
## images: build the operator image and the CPU trial image (needs Docker)
images:
	docker build -f operator.Dockerfile -t kubetune-operator:$(IMAGE_TAG) .
	docker build -f trial-image/Dockerfile --build-arg VARIANT=cpu -t kubetune-trial:$(IMAGE_TAG) .

## e2e-kind: kind cluster, both images, Prometheus, the chart and a study run to Succeeded (needs docker, kind, kubectl, helm; ~10 min)
e2e-kind: $(STAMP)
	PYTHON=$(BIN)/python hack/e2e-kind.sh up

## e2e-kind-clean: delete the kind cluster of e2e-kind
e2e-kind-clean:
	hack/e2e-kind.sh down

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[cluster,trainer,dev,bench]"
	touch $@

## bench-runner: the local runner's own overhead per trial, beside a bare loop and Optuna
bench-runner: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_runner.py

## bench-stopping: epochs spent and best accuracy of median, ASHA and Hyperband beside Optuna's pruners, reference trainer, 5 seeds (~3 min on 2 cores)
bench-stopping: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_stopping.py

## bench-engine: one decision round (stop or not for 10 running trials, then a suggestion) at 1,000 and 10,000 trials, beside Optuna (~30 s)
bench-engine: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_engine.py

## bench-lr-range: the learning-rate range test's rules beside a 20-trial random search over lr, reference trainer, Adam and SGD (~1.5 min on 2 cores)
bench-lr-range: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_lr_range.py

## bench-operator: the kopf operator against the emulated API: study -> first Job, pod done -> next Job, requests per trial, memory with 1,000 live trials (~1 min)
bench-operator: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_operator.py

## bench-strategies: sample efficiency (20 seeds, 30 trials) and suggestion latency of the strategies beside Optuna's (~20 min on 2 cores)
bench-strategies: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_strategies.py

clean:
	rm -rf $(VENV) kubetune-runs .pytest_cache
