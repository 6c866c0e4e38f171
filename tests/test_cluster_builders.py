"""Pure builders and observers of the cluster body: Jobs from the trial template, and trial
phases from Job and Pod status as the API server reports them."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kubetune.api.models import TrialSpec
from kubetune.cluster.builders import build_job, build_trial
from kubetune.cluster.observe import observe_job, parse_termination
from kubetune.cluster.prometheus import parse_result, study_query

from conftest import make_study

STUDY_BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterStudy",
              "metadata": {"name": "quad", "namespace": "ml", "uid": "study-uid"}}


def gpu_study(**spec):
    template = {"template": {
        "metadata": {"labels": {"team": "vision"}},
        "spec": {
            "containers": [
                {"name": "trial", "image": "kubetune-trial:0.1.0", "command": ["kubetune-train"],
                 "args": ["--x=${params.x}", "--name=${trial.name}"],
                 "env": [{"name": "RUN", "value": "${study.name}-${trial.index}"}],
                 "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}}},
                {"name": "sidecar", "image": "busybox", "args": ["echo", "${params.x}"]},
            ],
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
    }, "retries": 2, "timeoutSeconds": 600}
    study = make_study(trialTemplate=template, **spec)
    study.metadata.namespace = "ml"
    return study


def trial_body(study, index=3, parameters=None):
    spec = TrialSpec(study="quad", index=index, parameters=parameters or {"x": 0.25})
    body = build_trial(study, STUDY_BODY, f"quad-{index:04d}", spec)
    body["metadata"]["uid"] = "trial-uid"
    return body


def test_trial_is_owned_by_its_study_and_labelled():
    spec = TrialSpec(study="quad", index=3, parameters={"x": 0.25}, rerun_of="quad-0001")
    body = build_trial(gpu_study(), STUDY_BODY, "quad-0003", spec)
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterStudy", "name": "quad", "uid": "study-uid",
        "controller": True, "blockOwnerDeletion": True}]
    assert body["metadata"]["labels"] == {"kubetune.io/study": "quad", "kubetune.io/trial": "quad-0003"}
    assert body["spec"] == {"study": "quad", "index": 3, "parameters": {"x": 0.25}, "rerunOf": "quad-0001"}


def test_job_from_the_trial_template():
    study = gpu_study()
    job = build_job(study, trial_body(study))
    assert job["metadata"]["name"] == "quad-0003" and job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "trial-uid"
    assert job["metadata"]["labels"] == {"kubetune.io/study": "quad", "kubetune.io/trial": "quad-0003"}
    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 600
    pod = spec["template"]
    assert pod["metadata"]["labels"] == {"team": "vision", "kubetune.io/study": "quad", "kubetune.io/trial": "quad-0003"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100"}  # everything else in the pod spec is kept
    trial, sidecar = pod["spec"]["containers"]
    assert trial["args"] == ["--x=0.25", "--name=quad-0003"]
    assert sidecar["args"] == ["echo", "0.25"]
    assert trial["resources"] == {"limits": {"nvidia.com/gpu": "1", "memory": "8Gi"}}
    env = {e["name"]: e["value"] for e in trial["env"]}
    assert env["RUN"] == "quad-3"
    assert json.loads(env["KUBETUNE_PARAMS"]) == {"x": 0.25}
    assert env["KUBETUNE_PARAM_X"] == "0.25"
    assert env["KUBETUNE_TRIAL"] == "quad-0003" and env["KUBETUNE_STUDY"] == "quad" and env["KUBETUNE_NAMESPACE"] == "ml"
    assert env["KUBETUNE_METRICS_PORT"] == "9464"
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in trial["ports"]
    assert trial["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "env" not in sidecar and "ports" not in sidecar


def test_building_a_job_leaves_the_study_untouched():
    study = gpu_study()
    before = study.model_dump()
    build_job(study, trial_body(study))
    assert study.model_dump() == before


NOW = datetime(2026, 1, 1, 0, 10, tzinfo=timezone.utc)
JUST_NOW = "2026-01-01T00:10:00Z"
LONG_AGO = "2026-01-01T00:00:00Z"


def job(conditions=(), **status):
    conditions = [{"lastTransitionTime": JUST_NOW, **c} for c in conditions]
    return {"metadata": {"name": "quad-0003"}, "status": {"conditions": conditions, **status}}


def pod(phase="Pending", name="quad-0003-abc", created="2026-01-01T00:00:00Z", conditions=(), **container_state):
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"phase": phase, "conditions": list(conditions),
                       "containerStatuses": [{"name": "trial", **container_state}]}}


def test_a_scaled_trial_runs_with_the_scaled_rate_and_sees_the_raw_one():
    template = {"template": {"spec": {"containers": [{
        "name": "trial", "image": "kubetune-trial:0.1.0", "command": ["kubetune-train"],
        "args": ["--lr=${params.lr}", "--batch-size=${params.batch_size}", "--base-lr=${raw.lr}"]}]}}}
    study = make_study([{"name": "lr", "type": "float", "min": 1e-4, "max": 1.0, "scale": "log"},
                        {"name": "batch_size", "type": "int", "min": 16, "max": 256, "scale": "pow2"}],
                       trialTemplate=template, lrScaling={"rule": "linear", "baseBatchSize": 32})
    study.metadata.namespace = "ml"
    spec = TrialSpec(study="quad", index=0, parameters={"lr": 0.01, "batch_size": 128},
                     effective_parameters={"lr": 0.04, "batch_size": 128},
                     lr_range_test={"minLr": 1e-7, "maxLr": 10, "steps": 100, "beta": 0.98, "stopFactor": 4})
    body = build_trial(study, STUDY_BODY, "quad-0000", spec)
    assert body["spec"]["effectiveParameters"] == {"lr": 0.04, "batch_size": 128}
    body["metadata"]["uid"] = "trial-uid"
    container = build_job(study, body)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--lr=0.04", "--batch-size=128", "--base-lr=0.01"]
    env = {v["name"]: v["value"] for v in container["env"]}
    assert json.loads(env["KUBETUNE_PARAMS"]) == {"lr": 0.04, "batch_size": 128}
    assert json.loads(env["KUBETUNE_RAW_PARAMS"]) == {"lr": 0.01, "batch_size": 128}
    assert env["KUBETUNE_PARAM_LR"] == "0.04"
    assert json.loads(env["KUBETUNE_LR_RANGE_TEST"]) == {"minLr": 1e-7, "maxLr": 10, "steps": 100, "beta": 0.98,
                                                         "stopFactor": 4}


def test_no_job_yet_is_pending():
    assert observe_job(None, [], "trial", NOW).phase == "Pending"


def test_complete_job_succeeds_with_the_termination_message():
    record = json.dumps({"metrics": {"loss": 0.1}, "step": 5})
    observed = observe_job(job([{"type": "Complete", "status": "True"}], completionTime="2026-01-01T00:05:00Z"),
                           [pod("Succeeded", state={"terminated": {"exitCode": 0, "message": record}})], "trial", NOW)
    assert observed.phase == "Succeeded" and observed.completion_time == "2026-01-01T00:05:00Z"
    assert parse_termination(observed.termination_message) == {"metrics": {"loss": 0.1}, "step": 5}


def test_deadline_exceeded():
    observed = observe_job(job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                 "message": "Job was active longer than specified deadline"}]), [], "trial", NOW)
    assert (observed.phase, observed.reason) == ("Failed", "DeadlineExceeded")


def test_oom_killed():
    observed = observe_job(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
                           [pod("Failed", state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})], "trial", NOW)
    assert (observed.phase, observed.reason) == ("Failed", "OOMKilled")
    assert "memory limit" in observed.message


def test_error_carries_exit_code_and_the_containers_last_words():
    logs = "epoch 1\nepoch 2\nkubetune-train: training diverged at epoch 3 (train_loss=nan)\n"
    older = pod("Failed", name="a", created="2026-01-01T00:00:00Z", state={"terminated": {"exitCode": 1, "message": "old"}})
    newer = pod("Failed", name="b", created="2026-01-01T00:01:00Z",
                state={"terminated": {"exitCode": 3, "reason": "Error", "message": logs}})
    observed = observe_job(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
                           [newer, older], "trial", NOW)
    assert (observed.phase, observed.reason) == ("Failed", "Error")
    assert observed.message == "exit code 3: kubetune-train: training diverged at epoch 3 (train_loss=nan)"


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"])
def test_pods_that_can_never_start_fail_the_trial(reason):
    observed = observe_job(job(), [pod(state={"waiting": {"reason": reason, "message": "image kubetune-trial:typo not found"}})], "trial", NOW)
    assert (observed.phase, observed.reason, observed.message) == ("Failed", reason, "image kubetune-trial:typo not found")


def test_unschedulable_gpu_pod_stays_pending_with_the_schedulers_message():
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    observed = observe_job(job(), [pod(conditions=[{"type": "PodScheduled", "status": "False",
                                                     "reason": "Unschedulable", "message": message}])], "trial", NOW)
    assert observed.phase == "Pending" and observed.unschedulable == message


def test_a_finished_job_waits_for_its_pods_final_state_then_gives_up_on_it():
    complete = [{"type": "Complete", "status": "True"}]
    waiting = observe_job(job(complete), [pod("Running", state={"running": {}})], "trial", NOW)
    assert (waiting.phase, waiting.reason) == ("Running", "AwaitingPodStatus")
    late = [{"type": "Complete", "status": "True", "lastTransitionTime": LONG_AGO}]
    assert observe_job(job(late), [], "trial", NOW).phase == "Succeeded"  # the Pod was deleted meanwhile


def test_running_pod():
    assert observe_job(job(active=1), [pod("Running", state={"running": {}})], "trial", NOW).phase == "Running"


def test_termination_text_that_is_not_the_sdk_record_is_ignored_as_metrics():
    assert parse_termination("Traceback: boom") is None
    assert parse_termination('{"other": 1}') is None
    assert parse_termination(None) is None


def test_prometheus_query_is_one_per_study():
    query = study_query("ml", "quad", 3600)
    assert query.count("study=\"quad\",namespace=\"ml\"") == 2
    assert "last_over_time(kubetune_trial_metric" in query and "kubetune_trial_step" in query


def test_prometheus_result_parsing():
    data = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"trial": "quad-0000", "metric": "loss", "pod": "p"}, "value": [1, "0.5"]},
        {"metric": {"trial": "quad-0000", "metric": "__step__"}, "value": [1, "3"]},
        {"metric": {"trial": "quad-0001", "metric": "loss"}, "value": [1, "NaN"]},
    ]}}
    parsed = parse_result(data)
    assert parsed["quad-0000"].metrics == {"loss": 0.5} and parsed["quad-0000"].step == 3
    assert parsed["quad-0001"].step is None and parsed["quad-0001"].metrics["loss"] != parsed["quad-0001"].metrics["loss"]
