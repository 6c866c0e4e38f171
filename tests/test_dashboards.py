"""The Grafana dashboards: every query runs against a real Prometheus and must return data.

A panel that shows nothing is a bug, so the test produces everything the dashboards show and
then runs each panel's PromQL (and each template variable's query) through Prometheus's HTTP
API. The data is real:

- the operator is `python -m kubetune.operator` in a process of its own, serving /metrics, run
  against the emulated API server (tests/support/emulator.py) and reading trial metrics from
  this Prometheus;
- the test plays the kubelet: for each Job the operator creates it runs the Job's own command
  (tests/trials/quadratic.py) with the Job's environment as a real process, which serves
  kubetune_trial_metric on a loopback port that Prometheus scrapes, and reports the exit code
  and the termination message back on the Pod and Job;
- half of the grid's trials crash, so the failure panels have data, and a second study in a
  namespace whose Job creation the API server refuses (HTTP 500) makes reconciles fail, so the
  error panel has data.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kubetune.cluster.builders import TRIAL_INDEX_ANNOTATION, TRIAL_LABEL
from kubetune.local.executor import free_port
from kubetune.operator import metrics as operator_metrics
from kubetune.trial import METRIC_NAME, STEP_NAME

from conftest import QUADRATIC, ROOT
from support.http import fetch
from support.prometheus import OPERATOR_JOB
from support.waiting import wait_for

DASHBOARDS = sorted((ROOT / "charts" / "kubetune" / "dashboards").glob("*.json"))
NS, BROKEN_NS, STUDY = "ml", "ml-broken", "dash"
STUDIES = "kubetune.io/v1alpha1/hyperparameterstudies"
JOBS, PODS = "batch/v1/jobs", "v1/pods"
# What Grafana would put in for the template variables and its own interval macros.
SUBSTITUTIONS = {"namespace": NS, "study": STUDY, "metric": "loss", "job": OPERATOR_JOB,
                 "__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def exposed_names() -> set[str]:
    """Every series name the operator and the trials expose (DESIGN.md's metric names)."""
    names = {METRIC_NAME, STEP_NAME}
    for metric in (operator_metrics.STUDIES, operator_metrics.TRIALS, operator_metrics.BEST_OBJECTIVE):
        names.add(metric._name)
    for histogram in (operator_metrics.SUGGESTION_SECONDS, operator_metrics.RECONCILE_SECONDS):
        names.update(f"{histogram._name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    names.add(f"{operator_metrics.RECONCILE_ERRORS._name}_total")
    return names


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of a dashboard."""
    found = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in board["panels"] for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(expr, label) is a series lookup; count by (label) asks the same.
            expr, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"]).groups()
            found.append((f"variable ${variable['name']}", f"count by ({label}) ({expr})"))
    return found


def concrete(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: SUBSTITUTIONS[m[1]], expr)


def test_dashboards_are_well_formed_and_use_only_the_exposed_metric_names():
    assert [p.name for p in DASHBOARDS] == ["operator-health.json", "study-overview.json"]
    names = exposed_names()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"].startswith("kubetune / ")
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        variables = {v["name"] for v in board["templating"]["list"]}
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert {"x", "y", "w", "h"} <= panel["gridPos"].keys() and panel["targets"]
        for where, expr in queries(board):
            used = set(re.findall(r"\b(kubetune_\w+)", expr))
            assert used <= names, f"{path.name} {where}: {sorted(used - names)} are not exposed"
            # Beyond ours, only the client library's process metrics of the operator's own job.
            assert used or re.search(r'\bprocess_\w+\{job="\$job"\}', expr), f"{path.name} {where}: {expr}"
            for variable in re.findall(r"\$\{?(\w+)\}?", expr):
                assert variable in variables or variable.startswith("__"), f"{path.name} {where}: ${variable}"


# -- playing the kubelet with real trial processes -----------------------------------------------


@dataclass
class RunningTrial:
    job: dict[str, Any]
    process: subprocess.Popen
    port: int
    termination: Path


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Runs each Job's container as a local process and reports it on the Pod and the Job."""

    def __init__(self, cluster, prometheus, workdir: Path, trials: int) -> None:
        self.cluster, self.workdir = cluster, workdir
        self.running: dict[str, RunningTrial] = {}
        self.finished: set[str] = set()
        # Prometheus applies target changes at most every 5 s, longer than a trial here lives:
        # each trial index gets its port now, and Prometheus scrapes them all from the start.
        self.ports = [free_port() for _ in range(trials)]
        prometheus.set_targets(self.ports)

    def step(self) -> None:
        for job in self.cluster.list(JOBS, NS):
            name = job["metadata"]["name"]
            if name not in self.running and name not in self.finished:
                self.start(job)
        for name, trial in list(self.running.items()):
            if trial.process.poll() is not None:
                self.finish(name, trial)

    def start(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        port = self.ports[int(job["metadata"]["annotations"][TRIAL_INDEX_ANNOTATION])]
        termination = self.workdir / f"{name}.termination"
        env = {**os.environ, **{v["name"]: v["value"] for v in container.get("env", [])},
               "KUBETUNE_METRICS_PORT": str(port), "KUBETUNE_METRICS_ADDR": "127.0.0.1",
               "KUBETUNE_TERMINATION_PATH": str(termination)}
        process = subprocess.Popen(container["command"] + container.get("args", []), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.running[name] = RunningTrial(job, process, port, termination)
        self.pod_status(job, "Running", {"running": {"startedAt": now()}})

    def finish(self, name: str, trial: RunningTrial) -> None:
        del self.running[name]
        self.finished.add(name)
        code = trial.process.returncode
        logs = trial.process.stderr.read()
        trial.process.stderr.close()
        if code == 0:
            message = trial.termination.read_text()
            self.pod_status(trial.job, "Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}})
            self.cluster.patch_status(JOBS, NS, name, {"succeeded": 1, "startTime": now(), "completionTime": now(),
                                      "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}]})
        else:  # terminationMessagePolicy FallbackToLogsOnError: the log's tail
            self.pod_status(trial.job, "Failed", {"terminated": {"exitCode": code, "reason": "Error", "message": logs[-2000:]}})
            self.cluster.patch_status(JOBS, NS, name, {"failed": 1, "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now()}]})

    def pod_status(self, job: dict[str, Any], phase: str, state: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        pod_name = f"{name}-pod"
        if self.cluster.get(PODS, NS, pod_name) is None:
            self.cluster.create({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": NS, "labels": job["spec"]["template"]["metadata"]["labels"],
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                  "uid": job["metadata"]["uid"], "controller": True}]},
                "spec": job["spec"]["template"]["spec"]})
        self.cluster.patch_status(PODS, NS, pod_name, {"phase": phase, "containerStatuses": [{"name": "trial", "state": state}]})

    def stop(self) -> None:
        for trial in self.running.values():
            trial.process.kill()
            trial.process.wait()
            trial.process.stderr.close()


def study(namespace: str) -> dict[str, Any]:
    # A grid: x in {0.1, 0.5} by mode in {ok, crash}; each ok trial reports 8 steps, 0.4 s apart
    # (Prometheus scrapes every 0.5 s).
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterStudy",
        "metadata": {"name": STUDY, "namespace": namespace},
        "spec": {
            "objective": {"metric": "loss", "goal": "minimize"},
            "parameters": [{"name": "x", "type": "categorical", "values": [0.1, 0.5]},
                           {"name": "mode", "type": "categorical", "values": ["ok", "crash"]},
                           {"name": "steps", "type": "categorical", "values": [8]},
                           {"name": "delay", "type": "categorical", "values": [0.4]}],
            "strategy": {"name": "grid"},
            "budget": {"maxTrials": 4, "parallelTrials": 2, "maxFailedTrials": 2},
            "trialTemplate": {"template": {"spec": {"containers": [
                {"name": "trial", "image": "kubetune-trial:test", "command": [sys.executable, QUADRATIC]}]}}},
        },
    }


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_every_dashboard_query_returns_data_from_a_real_study_and_operator(cluster, prometheus, tmp_path):
    for namespace in (NS, BROKEN_NS):
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    # The API server refuses every Job in BROKEN_NS: that study's reconciles raise and are counted.
    cluster.emulator[f"post /apis/batch/v1/namespaces/{BROKEN_NS}/jobs"] << 500
    metrics_port, health_port = free_port(), free_port()
    operator = subprocess.Popen(
        [sys.executable, "-m", "kubetune.operator", "--namespace", NS, "--namespace", BROKEN_NS,
         "--prometheus-url", prometheus.url, "--resync-seconds", "1",
         "--metrics-port", str(metrics_port), "--health-port", str(health_port)],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kubelet = Kubelet(cluster, prometheus, tmp_path, trials=4)
    began = time.time()
    try:
        prometheus.set_targets([metrics_port], job=OPERATOR_JOB)
        wait_for(lambda: fetch(health_port, "/healthz") is not None, timeout=60, what="the operator's liveness endpoint")
        wait_for(lambda: len(prometheus.query("up")) == len(kubelet.ports) + 1, timeout=30,
                 what="Prometheus to scrape the operator and the trials' ports")
        cluster.create(study(NS))
        cluster.create(study(BROKEN_NS))

        def study_done() -> bool:
            kubelet.step()
            return ((cluster.get(STUDIES, NS, STUDY) or {}).get("status") or {}).get("phase") in ("Succeeded", "Failed")

        wait_for(study_done, timeout=60, interval=0.05, what="the study to finish")
        status = cluster.get(STUDIES, NS, STUDY)["status"]
        assert (status["phase"], status["trials"]["succeeded"], status["trials"]["failed"]) == ("Succeeded", 2, 2)
        assert status["bestTrial"]["parameters"]["x"] == 0.1

        pending = {}
        for path in DASHBOARDS:
            board = json.loads(path.read_text())
            pending.update({f"{path.name} {where}: {concrete(expr)}": concrete(expr) for where, expr in queries(board)})

        def all_have_data() -> bool:
            for key, expr in list(pending.items()):
                # Grafana runs range queries over the dashboard's time range: finished trials'
                # series are stale now, but their curves are in the range.
                if has_data(prometheus.query_range(expr, began, time.time())):
                    del pending[key]
            return not pending

        try:
            wait_for(all_have_data, timeout=30, interval=0.5, what="every dashboard query to return data")
        except AssertionError:
            pytest.fail("dashboard queries without data:\n" + "\n".join(pending))
        # The crashes are the failures the dashboard shows, with their logs on the trials.
        failed = f'kubetune_trials{{namespace="{NS}", study="{STUDY}", phase="Failed"}} == 2'
        wait_for(lambda: prometheus.query(failed), timeout=10, interval=0.2, what="both crashes in the failures panel")
        curves = prometheus.query_range(
            f'count by (trial) (kubetune_trial_metric{{namespace="{NS}", study="{STUDY}", metric="loss"}})', began, time.time())
        assert {s["metric"]["trial"] for s in curves} == {f"{STUDY}-0000", f"{STUDY}-0002"}
        assert all(TRIAL_LABEL in p["metadata"]["labels"] for p in cluster.list(PODS, NS))
        crashed = cluster.get("kubetune.io/v1alpha1/hyperparametertrials", NS, f"{STUDY}-0001")["status"]
        assert crashed["message"] == "exit code 1: something went wrong in the trainer"
    finally:
        kubelet.stop()
        operator.terminate()
        _, stderr = operator.communicate(timeout=30)
    errors = [line for line in stderr.splitlines() if "Traceback" in line]
    assert len(errors) >= 1 and "ApiException" in stderr  # only the refused Jobs, logged and retried
    assert "reconcile of study ml/" not in stderr, stderr[-3000:]
