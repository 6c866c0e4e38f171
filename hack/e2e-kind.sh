#!/usr/bin/env bash
# kubetune end to end on a kind cluster: images, Prometheus, the chart, a study, its results.
#
#   hack/e2e-kind.sh up     create the cluster (or reuse it) and run the whole check
#   hack/e2e-kind.sh down   delete the cluster
#
# Needs docker (a running engine), kind, kubectl and helm on PATH, and Python with PyYAML
# ($PYTHON, default .venv/bin/python: `make e2e-kind` prepares it). About 10 minutes on a laptop,
# most of it building the trial image (torch). See docs/deploy.md.
set -euo pipefail

CLUSTER=${KUBETUNE_KIND_CLUSTER:-kubetune-e2e}
NODE_IMAGE=${KUBETUNE_KIND_NODE_IMAGE:-kindest/node:v1.31.0}
PYTHON=${PYTHON:-.venv/bin/python}
OPERATOR_IMAGE=kubetune-operator:e2e
TRIAL_IMAGE=kubetune-trial:e2e
STUDY=digits
STUDY_NAMESPACE=default
TIMEOUT=${KUBETUNE_E2E_TIMEOUT:-1200}  # seconds for the study to finish

cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; diagnose; exit 1; }
diagnose() {
  kubectl get hps,hpt,jobs,pods -A -o wide 2>/dev/null || true
  kubectl -n kubetune-system logs deploy/kubetune --tail=50 2>/dev/null || true
}
prometheus_query() {  # through the API server's service proxy: no port-forward to clean up
  kubectl get --raw "/api/v1/namespaces/monitoring/services/prometheus:9090/proxy/api/v1/query?query=$(
    "$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")"
}

down() {
  kind delete cluster --name "$CLUSTER"
}

up() {
  for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "needs $tool on PATH" >&2; exit 2; }
  done
  docker info >/dev/null 2>&1 || { echo "needs a running Docker engine (docker info failed)" >&2; exit 2; }

  step "kind cluster $CLUSTER ($NODE_IMAGE)"
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 120s
  kubectl config use-context "kind-$CLUSTER"

  step "images: $OPERATOR_IMAGE, $TRIAL_IMAGE (CPU)"
  docker build -f operator.Dockerfile -t "$OPERATOR_IMAGE" .
  docker build -f trial-image/Dockerfile --build-arg VARIANT=cpu -t "$TRIAL_IMAGE" .
  kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRIAL_IMAGE"

  step "Prometheus (annotation discovery)"
  kubectl apply -f hack/e2e/prometheus.yaml
  kubectl -n monitoring rollout status deploy/prometheus --timeout=180s

  step "the chart"
  helm upgrade --install kubetune charts/kubetune --namespace kubetune-system --create-namespace \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE#*:}" --set image.pullPolicy=Never \
    --set prometheus.url=http://prometheus.monitoring:9090 --wait --timeout 180s
  kubectl -n kubetune-system rollout status deploy/kubetune --timeout=120s

  step "study $STUDY (CPU variant of examples/digits/study.yaml)"
  kubectl -n "$STUDY_NAMESPACE" delete hps "$STUDY" --ignore-not-found --wait=true
  "$PYTHON" hack/e2e/study.py "$TRIAL_IMAGE" | kubectl -n "$STUDY_NAMESPACE" apply -f -
  deadline=$((SECONDS + TIMEOUT))
  until phase=$(kubectl -n "$STUDY_NAMESPACE" get hps "$STUDY" -o jsonpath='{.status.phase}'); \
        [[ "$phase" == Succeeded || "$phase" == Failed ]]; do
    ((SECONDS < deadline)) || fail "study $STUDY still ${phase:-Pending} after ${TIMEOUT}s"
    sleep 5
  done
  [[ "$phase" == Succeeded ]] || fail "study $STUDY $phase"
  kubectl -n "$STUDY_NAMESPACE" get hps,hpt

  step "checks"
  read -r best objective succeeded < <(kubectl -n "$STUDY_NAMESPACE" get hps "$STUDY" \
    -o jsonpath='{.status.bestTrial.name} {.status.bestTrial.objective} {.status.trials.succeeded}{"\n"}')
  echo "best trial: $best, val_loss $objective, $succeeded trials succeeded"
  [[ "$best" == "$STUDY"-* ]] || fail "no best trial"
  # Chance level for 10 classes is ln(10) = 2.30. Trials are deterministic on CPU: run locally,
  # the same four trials give a best val_loss of 0.23 (digits-0001).
  "$PYTHON" -c 'import sys; sys.exit(not float(sys.argv[1]) < 0.5)' "$objective" || fail "best val_loss $objective"
  [[ "$succeeded" -ge 1 ]] || fail "no trial succeeded"
  trial_series=$(prometheus_query "count(last_over_time(kubetune_trial_metric{namespace=\"$STUDY_NAMESPACE\",study=\"$STUDY\",metric=\"val_loss\"}[1h]))")
  echo "Prometheus, trials' val_loss series: $trial_series"
  [[ "$trial_series" == *'"value":['* ]] || fail "Prometheus holds no trial metrics"
  operator_series=$(prometheus_query "kubetune_study_best_objective{namespace=\"$STUDY_NAMESPACE\",study=\"$STUDY\"}")
  echo "Prometheus, operator's best objective: $operator_series"
  [[ "$operator_series" == *'"value":['* ]] || fail "Prometheus holds no operator metrics"
  printf '\nkind end-to-end passed. Remove the cluster with: make e2e-kind-clean\n'
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
