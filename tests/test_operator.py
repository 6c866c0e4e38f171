"""The real kopf operator against the emulated API server, over HTTP.

No Job controller, scheduler or kubelet runs here: the tests play them. When the operator
creates a Job, a test creates its Pod and moves both through their phases, writing the
trial's termination message as the kubelet would. Owner-reference garbage collection is
played by `cluster.collect_garbage()`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Optional

import kopf
import pytest

from kubetune.cluster.builders import STUDY_LABEL, TRIAL_LABEL
from kubetune.operator import reconcile
from kubetune.operator.reconcile import OperatorConfig
from kubetune.strategies import make_strategy

from conftest import ROOT, make_study, study_manifest
from support.emulator import KopfThread
from support.waiting import wait_for

NS = "ml"
STUDIES = "kubetune.io/v1alpha1/hyperparameterstudies"
TRIALS = "kubetune.io/v1alpha1/hyperparametertrials"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"


@pytest.fixture
def operator(cluster, monkeypatch):
    """Start (and restart) the operator; it watches namespace `ml`."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})  # kopf watches existing ones
    threads = []

    def start(**config: Any) -> KopfThread:
        config.setdefault("resync_seconds", 30.0)
        thread = KopfThread("kubetune.operator.handlers", server=cluster, namespaces=[NS],
                            memo=kopf.Memo(config=OperatorConfig(**config)))
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()


def study(name="quad", **spec) -> dict:
    manifest = study_manifest(**spec)
    manifest["metadata"] = {"name": name, "namespace": NS}
    container = manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container.update(image="kubetune-trial:test", command=["kubetune-train"], args=["--x=${params.x}"])
    return manifest


def get_study(cluster, name="quad") -> dict:
    return cluster.get(STUDIES, NS, name)


def condition(body: dict, type_: str) -> Optional[dict]:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def phase_is(cluster, phase, name="quad"):
    return lambda: (get_study(cluster, name).get("status") or {}).get("phase") == phase


def jobs(cluster) -> dict[str, dict]:
    return {j["metadata"]["name"]: j for j in cluster.list(JOBS, NS)}


def trials(cluster) -> dict[str, dict]:
    return {t["metadata"]["name"]: t for t in cluster.list(TRIALS, NS)}


def unfinished_jobs(cluster) -> dict[str, dict]:
    return {n: j for n, j in jobs(cluster).items() if not (j.get("status") or {}).get("conditions")}


# -- playing the Job controller and the kubelet ----------------------------------------------


def make_pod(cluster, job: dict, phase: str, container_status: dict, scheduled: Optional[dict] = None) -> dict:
    name = job["metadata"]["name"]
    pod = cluster.get(PODS, NS, f"{name}-pod") or cluster.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-pod", "namespace": NS, "labels": job["spec"]["template"]["metadata"]["labels"],
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                          "uid": job["metadata"]["uid"], "controller": True}]},
        "spec": job["spec"]["template"]["spec"],
    })
    status = {"phase": phase, "containerStatuses": [{"name": "trial", **container_status}]}
    if scheduled is not None:
        status["conditions"] = [scheduled]
    cluster.patch_status(PODS, NS, pod["metadata"]["name"], status)
    return pod


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def succeed(cluster, job: dict, metrics: dict[str, float], step: int = 3) -> None:
    message = json.dumps({"metrics": metrics, "step": step, "history": []})
    make_pod(cluster, job, "Succeeded", {"state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}})
    cluster.patch_status(JOBS, NS, job["metadata"]["name"], {
        "succeeded": 1, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z",
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}]})


def fail(cluster, job: dict, exit_code: int = 1, logs: str = "RuntimeError: CUDA error") -> None:
    make_pod(cluster, job, "Failed", {"state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": logs}}})
    cluster.patch_status(JOBS, NS, job["metadata"]["name"], {
        "failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "lastTransitionTime": now()}]})


def run_pod(cluster, job: dict) -> None:
    make_pod(cluster, job, "Running", {"state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}})


def loss_of(job: dict) -> float:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    x = float(next(a for a in args if a.startswith("--x=")).split("=", 1)[1])
    return (x - 0.3) ** 2


def finish_all(cluster, max_parallel: int, total: int) -> None:
    """Complete Jobs as the operator creates them, checking parallelism never exceeds the limit."""
    done: set[str] = set()
    while len(done) < total:
        running = wait_for(lambda: {n: j for n, j in unfinished_jobs(cluster).items() if n not in done},
                           timeout=15, what=f"a new Job ({len(done)} of {total} done)")
        assert len(running) <= max_parallel, f"{len(running)} Jobs at once, parallelTrials is {max_parallel}"
        name, job = sorted(running.items())[0]
        succeed(cluster, job, {"loss": loss_of(job), "val_accuracy": 0.9})
        done.add(name)


# -- scenarios ----------------------------------------------------------------------------------


def test_a_study_runs_from_apply_to_succeeded(cluster, operator):
    operator()
    cluster.create(study(budget={"maxTrials": 4, "parallelTrials": 2}))
    finish_all(cluster, max_parallel=2, total=4)
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    body = get_study(cluster)
    status = body["status"]
    assert status["trials"]["succeeded"] == 4 and status["trials"]["total"] == 4
    assert condition(body, "Succeeded")["reason"] == "MaxTrialsReached"
    assert condition(body, "Ready")["status"] == "True"
    all_trials = trials(cluster)
    assert sorted(all_trials) == [f"quad-{i:04d}" for i in range(4)]
    losses = {n: t["status"]["metrics"]["loss"] for n, t in all_trials.items()}
    assert status["bestTrial"]["name"] == min(losses, key=losses.get)
    # Trials carry the engine's suggestions: the same as the strategy proposes for this seed.
    strategy = make_strategy(make_study(budget={"maxTrials": 4}))
    for index in range(4):
        assert all_trials[f"quad-{index:04d}"]["spec"]["parameters"] == strategy.suggest(index, [])
    job = jobs(cluster)["quad-0000"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == all_trials["quad-0000"]["metadata"]["uid"]
    assert job["metadata"]["labels"] == {STUDY_LABEL: "quad", TRIAL_LABEL: "quad-0000"}
    assert all_trials["quad-0000"]["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]


def test_failing_trials_fail_the_study_past_max_failed_trials(cluster, operator):
    operator()
    cluster.create(study(budget={"maxTrials": 10, "parallelTrials": 1, "maxFailedTrials": 1}))
    for _ in range(2):
        job = wait_for(lambda: next(iter(unfinished_jobs(cluster).values()), None), what="a Job")
        fail(cluster, job, logs="line 1\nRuntimeError: CUDA out of memory\n")
        wait_for(lambda: (trials(cluster)[job["metadata"]["name"]].get("status") or {}).get("phase") == "Failed",
                 what="the trial to fail")
    wait_for(phase_is(cluster, "Failed"), what="study Failed")
    body = get_study(cluster)
    assert condition(body, "Failed")["reason"] == "TooManyFailedTrials"
    assert condition(body, "Ready")["status"] == "False"
    failed = trials(cluster)["quad-0000"]["status"]
    assert failed["reason"] == "Error" and failed["message"] == "exit code 1: RuntimeError: CUDA out of memory"
    assert len(jobs(cluster)) == 2  # no trial started after the study failed


def test_reaching_the_target_stops_running_trials(cluster, operator):
    operator()
    cluster.create(study(objective={"metric": "loss", "target": 0.5}, budget={"maxTrials": 10, "parallelTrials": 3}))
    running = wait_for(lambda: len(unfinished_jobs(cluster)) == 3 and unfinished_jobs(cluster), what="3 Jobs")
    first, *others = sorted(running)
    for name in others:
        run_pod(cluster, running[name])
    succeed(cluster, running[first], {"loss": 0.1})
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    assert condition(get_study(cluster), "Succeeded")["reason"] == "TargetReached"
    wait_for(lambda: set(jobs(cluster)) == {first}, what="the running trials' Jobs to be deleted")
    for name in others:
        status = trials(cluster)[name]["status"]
        assert (status["phase"], status["reason"]) == ("Stopped", "StudySucceeded")


def test_suspend_stops_trials_and_resume_reruns_them(cluster, operator):
    operator()
    cluster.create(study(budget={"maxTrials": 3, "parallelTrials": 2}))
    running = wait_for(lambda: len(jobs(cluster)) == 2 and jobs(cluster), what="2 Jobs")
    cluster.patch(STUDIES, NS, "quad", {"spec": {"suspend": True}})
    wait_for(phase_is(cluster, "Suspended"), what="study Suspended")
    wait_for(lambda: not jobs(cluster), what="Jobs deleted on suspension")
    assert {t["status"]["phase"] for t in trials(cluster).values()} == {"Stopped"}

    cluster.patch(STUDIES, NS, "quad", {"spec": {"suspend": False}})
    reruns = wait_for(lambda: len(jobs(cluster)) == 2 and jobs(cluster), what="the stopped trials to run again")
    all_trials = trials(cluster)
    for name in reruns:
        original = all_trials[name]["spec"]["rerunOf"]
        assert all_trials[name]["spec"]["parameters"] == all_trials[original]["spec"]["parameters"]
        assert original in running
    finish_all(cluster, max_parallel=2, total=3)
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded after resuming")
    assert get_study(cluster)["status"]["trials"] == {
        "total": 5, "pending": 0, "running": 0, "succeeded": 3, "failed": 0, "pruned": 0, "stopped": 2}


def test_raising_max_trials_resumes_a_finished_study(cluster, operator):
    operator()
    cluster.create(study(budget={"maxTrials": 1, "parallelTrials": 1}))
    finish_all(cluster, max_parallel=1, total=1)
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    cluster.patch(STUDIES, NS, "quad", {"spec": {"budget": {"maxTrials": 2}}})
    job = wait_for(lambda: unfinished_jobs(cluster).get("quad-0001"), what="a second trial")
    succeed(cluster, job, {"loss": 0.2})
    wait_for(lambda: phase_is(cluster, "Succeeded")() and get_study(cluster)["status"]["trials"]["succeeded"] == 2,
             what="study Succeeded with 2 trials")
    assert get_study(cluster)["status"]["observedGeneration"] == get_study(cluster)["metadata"]["generation"]


def test_an_unschedulable_gpu_trial_surfaces_the_schedulers_message(cluster, operator):
    operator()
    manifest = study(budget={"maxTrials": 1})
    container = manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    cluster.create(manifest)
    job = wait_for(lambda: jobs(cluster).get("quad-0000"), what="the Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    make_pod(cluster, job, "Pending", {"state": {"waiting": {"reason": "ContainerCreating"}}},
             scheduled={"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message})
    wait_for(lambda: (condition(get_study(cluster), "TrialsUnschedulable") or {}).get("status") == "True",
             what="TrialsUnschedulable=True")
    assert message in condition(get_study(cluster), "TrialsUnschedulable")["message"]
    assert trials(cluster)["quad-0000"]["status"]["phase"] == "Pending"


def test_with_prometheus_down_results_come_from_termination_messages(cluster, operator):
    from kubetune.local.executor import free_port

    operator(prometheus_url=f"http://127.0.0.1:{free_port()}")
    cluster.create(study(budget={"maxTrials": 1}))
    job = wait_for(lambda: jobs(cluster).get("quad-0000"), what="the Job")
    succeed(cluster, job, {"loss": 0.25})
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded without Prometheus")
    body = get_study(cluster)
    assert body["status"]["bestTrial"]["objective"] == 0.25
    assert condition(body, "MetricsDegraded")["reason"] in ("PrometheusUnavailable", "MetricsAvailable")


def test_prometheus_unreachable_while_trials_run_sets_metrics_degraded(cluster, operator):
    from kubetune.local.executor import free_port

    operator(prometheus_url=f"http://127.0.0.1:{free_port()}")
    cluster.create(study(budget={"maxTrials": 1}))
    job = wait_for(lambda: jobs(cluster).get("quad-0000"), what="the Job")
    run_pod(cluster, job)
    wait_for(lambda: (condition(get_study(cluster), "MetricsDegraded") or {}).get("status") == "True",
             what="MetricsDegraded=True")
    assert "termination messages" in condition(get_study(cluster), "MetricsDegraded")["message"]


def test_operator_restart_loses_nothing_and_duplicates_nothing(cluster, operator):
    first = operator()
    cluster.create(study(budget={"maxTrials": 4, "parallelTrials": 2}))
    running = wait_for(lambda: len(jobs(cluster)) == 2 and jobs(cluster), what="2 Jobs")
    name = sorted(running)[0]
    succeed(cluster, running[name], {"loss": 0.3})
    wait_for(lambda: (trials(cluster)[name].get("status") or {}).get("phase") == "Succeeded", what="trial recorded")
    first.stop()
    # While the operator is down, the other trial finishes.
    other = sorted(running)[1]
    succeed(cluster, running[other], {"loss": 0.2})
    operator()
    wait_for(lambda: len(jobs(cluster)) == 4, what="the remaining trials after the restart")
    finish_all_remaining = {n: j for n, j in unfinished_jobs(cluster).items()}
    for job in finish_all_remaining.values():
        succeed(cluster, job, {"loss": loss_of(job)})
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    all_trials = trials(cluster)
    assert sorted(all_trials) == [f"quad-{i:04d}" for i in range(4)]
    assert all_trials[name]["status"]["metrics"]["loss"] == 0.3
    assert all_trials[other]["status"]["metrics"]["loss"] == 0.2
    strategy = make_strategy(make_study(budget={"maxTrials": 4}))
    for index in range(4):
        assert all_trials[f"quad-{index:04d}"]["spec"]["parameters"] == strategy.suggest(index, [])


def test_an_invalid_study_gets_ready_false_naming_the_field(cluster, operator):
    operator()
    manifest = study()
    manifest["spec"]["parameters"][0]["min"] = 5.0  # the emulator runs no CEL; the operator must say it
    cluster.create(manifest)
    wait_for(lambda: condition(get_study(cluster), "Ready"), what="a Ready condition")
    ready = condition(get_study(cluster), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.parameters[0]: min must be less than max" in ready["message"]
    assert not jobs(cluster) and not trials(cluster)


def test_deleting_a_study_cascades_to_trials_and_jobs(cluster, operator):
    operator()
    cluster.create(study(budget={"maxTrials": 2, "parallelTrials": 2}))
    wait_for(lambda: len(jobs(cluster)) == 2, what="2 Jobs")
    for job in jobs(cluster).values():
        run_pod(cluster, job)
    cluster.delete(STUDIES, NS, "quad")
    wait_for(lambda: get_study(cluster) is None, what="the study to be deleted")
    cluster.collect_garbage()
    assert not trials(cluster) and not jobs(cluster) and not cluster.list(PODS, NS)


def test_kubectl_apply_of_the_example_runs_it(cluster, operator):
    operator()
    example = ROOT / "examples" / "digits" / "study.yaml"
    cluster.kubectl("apply", "--validate=false", "-n", NS, "-f", str(example))
    job = wait_for(lambda: jobs(cluster).get("digits-0000"), what="the example's first Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0].startswith("--lr=") and "--epochs=8" in args
    # The status is written after the Job is created: wait for kubectl to show it.
    wait_for(lambda: (json.loads(cluster.kubectl("get", "hps", "-n", NS, "-o", "json").stdout)["items"][0]
                      .get("status") or {}).get("phase") == "Running", what="kubectl get hps showing Running")


def test_editing_the_stages_of_a_running_study_is_refused_naming_the_field(cluster, operator):
    operator()
    parameters = [{"name": "x", "type": "float", "min": -1.0, "max": 1.0}, {"name": "y", "type": "float", "min": -1.0, "max": 1.0}]
    stages = [{"name": "first", "parameters": ["x"], "maxTrials": 2}, {"name": "second", "parameters": ["y"]}]
    cluster.create(study(parameters=parameters, stages=stages, budget={"maxTrials": 4, "parallelTrials": 1}))
    wait_for(lambda: jobs(cluster).get("quad-0000"), what="the first Job")
    # The emulator runs no CEL (a real API server refuses this edit): the operator's own check.
    edited = [dict(stages[0], maxTrials=3), stages[1]]
    cluster.patch(STUDIES, NS, "quad", {"spec": {"stages": edited}})
    ready = wait_for(lambda: (lambda c: c if (c or {}).get("reason") == "ImmutableFieldChanged" else None)(
        condition(get_study(cluster), "Ready")), what="Ready=False ImmutableFieldChanged")
    assert ready["message"].startswith("spec.stages changed after the study started")
    succeed(cluster, jobs(cluster)["quad-0000"], {"loss": 0.5})
    cluster.patch(STUDIES, NS, "quad", {"spec": {"stages": stages}})
    wait_for(lambda: jobs(cluster).get("quad-0001"), what="the study to continue")
    assert trials(cluster)["quad-0000"]["status"]["metrics"]["loss"] == 0.5


def test_an_older_operators_fingerprint_is_accepted_and_still_catches_an_edit():
    study_ = make_study()
    fields = study_.spec.immutable_fields()
    legacy = reconcile._digest({"parameters": fields["parameters"], "objective": fields["objective"]})
    assert reconcile.changed_fields(study_, legacy, reconcile.immutable_digests(study_)) == []
    edited = make_study([{"name": "x", "type": "float", "min": -1.0, "max": 2.0}])
    assert reconcile.changed_fields(edited, legacy, reconcile.immutable_digests(edited)) == ["parameters", "objective"]
    # The current form names exactly the field that changed, including one added later.
    current = json.dumps(reconcile.immutable_digests(study_))
    scaled = make_study(lrScaling={"rule": "linear", "baseBatchSize": 64})
    assert reconcile.changed_fields(scaled, current, reconcile.immutable_digests(scaled)) == ["lrScaling"]


def test_editing_the_search_space_of_a_running_study_is_refused_with_a_condition(cluster, operator):
    operator()
    cluster.create(study(budget={"maxTrials": 5, "parallelTrials": 1}))
    wait_for(lambda: jobs(cluster).get("quad-0000"), what="the first Job")
    # A real API server rejects this with the CEL transition rule; the emulator runs no CEL.
    cluster.patch(STUDIES, NS, "quad", {"spec": {"parameters": [{"name": "x", "type": "float", "min": 0.0, "max": 9.0}]}})
    wait_for(lambda: (condition(get_study(cluster), "Ready") or {}).get("reason") == "ImmutableFieldChanged",
             what="Ready=False ImmutableFieldChanged")
    assert "create a new study" in condition(get_study(cluster), "Ready")["message"]
    succeed(cluster, jobs(cluster)["quad-0000"], {"loss": 0.5})
    assert set(jobs(cluster)) == {"quad-0000"}  # nothing new starts on the changed space
    # Restoring the original space loses nothing: the result that came in meanwhile is recorded.
    cluster.patch(STUDIES, NS, "quad", {"spec": {"parameters": study()["spec"]["parameters"]}})
    wait_for(lambda: jobs(cluster).get("quad-0001"), what="the study to continue")
    assert trials(cluster)["quad-0000"]["status"]["metrics"]["loss"] == 0.5
    wait_for(lambda: condition(get_study(cluster), "Ready")["status"] == "True", what="Ready=True again")


def test_events_and_metrics_report_what_happened(cluster, operator):
    from prometheus_client import REGISTRY

    operator()
    cluster.create(study(budget={"maxTrials": 2, "parallelTrials": 2}))
    finish_all(cluster, max_parallel=2, total=2)
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    reasons = wait_for(lambda: {e["reason"] for e in cluster.list("v1/events", NS)} >= {"MaxTrialsReached", "NewBestTrial"}
                       and [e["reason"] for e in cluster.list("v1/events", NS)], what="events")
    assert len(reasons) <= 6, reasons  # transitions only, not one event per reconcile
    labels = {"namespace": NS, "study": "quad"}
    assert REGISTRY.get_sample_value("kubetune_trials", {**labels, "phase": "Succeeded"}) == 2
    best = get_study(cluster)["status"]["bestTrial"]["objective"]
    assert REGISTRY.get_sample_value("kubetune_study_best_objective", labels) == best
    assert REGISTRY.get_sample_value("kubetune_reconcile_duration_seconds_count") > 0
    assert REGISTRY.get_sample_value("kubetune_suggestion_duration_seconds_count") > 0


def test_tuning_advice_is_posted_once_as_an_event(cluster, operator):
    operator()
    parameters = [{"name": "x", "type": "float", "min": -1.0, "max": 1.0}, {"name": "lr", "type": "float", "min": 1e-5, "max": 0.1}]
    cluster.create(study(parameters=parameters, budget={"maxTrials": 2, "parallelTrials": 1}))
    finish_all(cluster, max_parallel=1, total=2)
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    wait_for(lambda: "MaxTrialsReached" in {e["reason"] for e in cluster.list("v1/events", NS)}, what="the final event")
    advice = [e for e in cluster.list("v1/events", NS) if e["reason"] == "TuningAdvice"]
    assert len(advice) == 1 and advice[0]["type"] == "Normal"  # several reconciles, one event
    assert advice[0]["message"].startswith("spec.parameters[1].scale: lr spans 4 orders of magnitude")


def test_a_reconcile_of_a_stale_body_does_not_post_the_advice_again(cluster):
    # The daemon can be woken (by a trial's event) before the watch shows the annotation its
    # previous reconcile wrote; that reconcile must still know the study has been seen.
    import kubernetes
    from kubetune.cluster.kube import KubeApi

    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    parameters = [{"name": "x", "type": "float", "min": -1.0, "max": 1.0}, {"name": "lr", "type": "float", "min": 1e-5, "max": 0.1}]
    stale = cluster.create(study(parameters=parameters))
    api = KubeApi(kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    reconciler, memory = reconcile.Reconciler(api, OperatorConfig()), reconcile.StudyMemory()
    reasons = []
    for _ in range(2):
        outcome = reconciler.reconcile(stale, [], {}, {}, datetime.now(timezone.utc), memory)
        reasons += [reason for _, reason, _ in outcome.events]
    assert reasons.count("TuningAdvice") == 1, reasons
    assert reconcile.SEARCH_SPACE_ANNOTATION in get_study(cluster)["metadata"]["annotations"]


def test_the_operator_command_serves_health_and_metrics_and_runs_studies(cluster):
    import os
    import subprocess
    import sys
    from kubetune.local.executor import free_port
    from support.http import fetch

    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune.operator", "--namespace", NS,
         "--metrics-port", str(metrics_port), "--health-port", str(health_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    try:
        wait_for(lambda: fetch(health_port, "/healthz") is not None, timeout=60, what="the liveness endpoint")
        cluster.create(study(budget={"maxTrials": 1}))
        wait_for(lambda: jobs(cluster).get("quad-0000"), timeout=60, what="the operator process to create a Job")
        wait_for(lambda: 'kubetune_trials{namespace="ml",phase="Pending",study="quad"} 1.0' in (fetch(metrics_port, "/metrics") or ""),
                 timeout=60, what="operator metrics")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr[-3000:]


def test_a_staged_study_with_a_range_test_runs_and_survives_a_restart(cluster, operator):
    first = operator()
    manifest = study(parameters=[{"name": "lr", "type": "float", "min": 1e-4, "max": 1.0, "scale": "log"},
                                 {"name": "x", "type": "float", "min": -1.0, "max": 1.0}],
                     stagePreset={"name": "priority", "lrRangeTest": {"maxLr": 1.0}},
                     budget={"maxTrials": 3, "parallelTrials": 1})
    manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]["args"] += ["--lr=${params.lr}"]
    cluster.create(manifest)
    job = wait_for(lambda: jobs(cluster).get("quad-0000"), what="the range-test Job")
    env = {v["name"]: v.get("value") for v in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["KUBETUNE_LR_RANGE_TEST"])["maxLr"] == 1.0
    assert trials(cluster)["quad-0000"]["spec"]["stage"] == "lr-range-test"
    # The trainer's curve, in its termination message: falling to a minimum at lr=0.1, then rising.
    curve = [{"step": i, "metrics": {"lr": round(1e-5 * 10 ** (i / 8), 8),
                                     "loss": round(2.3 - 2 / (1 + 10 ** (-(i - 24) / 6)) + max(0, i - 32) ** 2 / 4, 4)}}
             for i in range(40)]
    message = json.dumps({"metrics": curve[-1]["metrics"], "step": 39, "history": curve})
    assert len(message) < 4096
    make_pod(cluster, job, "Succeeded", {"state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}})
    cluster.patch_status(JOBS, NS, "quad-0000", {
        "succeeded": 1, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z",
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}]})
    wait_for(lambda: "quad-0001" in jobs(cluster), what="the first trial of the next stage")
    first.stop()
    operator()  # a restart between the stages: the range test's pick must stay the same
    for job in wait_for(lambda: unfinished_jobs(cluster), what="the running trial").values():
        succeed(cluster, job, {"loss": loss_of(job)})
    job = wait_for(lambda: jobs(cluster).get("quad-0002"), what="the last trial")
    succeed(cluster, job, {"loss": loss_of(job)})
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    status = get_study(cluster)["status"]
    picked = status["lrRangeTest"]["learningRate"]
    assert 1e-3 < picked < 0.1  # the divergence rule: a tenth of where the loss turns up
    assert [s["name"] for s in status["stages"]] == ["lr-range-test", "other"]
    later = [t for n, t in trials(cluster).items() if n != "quad-0000"]
    assert len(later) == 2 and {t["spec"]["parameters"]["lr"] for t in later} == {picked}
    assert {t["spec"]["stage"] for t in later} == {"other"}
    assert status["bestTrial"]["name"] in {t["metadata"]["name"] for t in later}
