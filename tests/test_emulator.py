"""The API server emulator behaves as a real API server for kopf, kubectl and the Kubernetes client.

A tiny kopf operator defined here reacts to HyperparameterStudies the way kubetune's will:
it creates an owned child (a ConfigMap) and writes status.phase. Nothing here sleeps to pass
a race: every test waits for a condition.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kopf
import kubernetes
import pytest
import requests
import yaml

from support.emulator import ApiError, EmulatedCluster, KopfThread, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
STUDIES = "kubetune.io/v1alpha1/hyperparameterstudies"
EXAMPLE = ROOT / "examples" / "digits" / "study.yaml"

registry = kopf.OperatorRegistry()
created_studies: list[str] = []
spec_changes: list[tuple[str, int]] = []
deleted_studies: list[str] = []


@kopf.on.create("kubetune.io", "v1alpha1", "hyperparameterstudies", registry=registry)
def study_created(body, name, namespace, patch, memo, **_):
    created_studies.append(name)
    child = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": f"{name}-trials", "labels": {"kubetune.io/study": name}},
             "data": {"trials": "0"}}
    kopf.adopt(child, owner=body)
    kubernetes.client.CoreV1Api(memo.api_client).create_namespaced_config_map(namespace, child)
    patch.status["phase"] = "Running"
    kopf.info(body, reason="StudyStarted", message="Created the trials ConfigMap.")


@kopf.on.update("kubetune.io", "v1alpha1", "hyperparameterstudies", field="spec", registry=registry)
def study_spec_changed(name, new, **_):
    spec_changes.append((name, new["budget"]["maxTrials"]))


@kopf.on.delete("kubetune.io", "v1alpha1", "hyperparameterstudies", registry=registry)
def study_deleted(name, **_):
    deleted_studies.append(name)


def example_study() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture
def operator(cluster: EmulatedCluster):
    created_studies.clear()
    spec_changes.clear()
    deleted_studies.clear()
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    thread = KopfThread(registry, server=cluster, namespaces=["default"], watched=[STUDIES],
                        memo=kopf.Memo(api_client=api_client))
    with thread:
        yield thread
    api_client.close()


def wait_until_handled(cluster: EmulatedCluster, name: str) -> dict:
    return wait_for(
        lambda: (study := cluster.get(STUDIES, "default", name))
        and study.get("status", {}).get("phase") == "Running" and study,
        what=f"the operator to handle study {name}")


def barrier(cluster: EmulatedCluster, name: str, max_trials: int) -> None:
    """Change the spec and wait for the update handler: kopf has processed all earlier events."""
    cluster.patch(STUDIES, "default", name, {"spec": {"budget": {"maxTrials": max_trials}}})
    wait_for(lambda: (name, max_trials) in spec_changes, what="the update handler to run")


def test_create_handler_runs_exactly_once(cluster, operator):
    cluster.create(example_study())
    study = wait_until_handled(cluster, "digits")
    barrier(cluster, "digits", max_trials=13)

    assert created_studies == ["digits"]
    assert cluster.count_requests(user_agent="OpenAPI-Generator", method="POST", resource="v1/configmaps") == 1
    assert [e for e in cluster.api_errors if e.status == 409] == []
    child = cluster.get("v1/configmaps", "default", "digits-trials")
    assert child["metadata"]["ownerReferences"][0]["uid"] == study["metadata"]["uid"]
    assert cluster.count_requests(user_agent="kopf") > 0
    [event] = wait_for(lambda: cluster.list("v1/events", "default", field_selector="involvedObject.name=digits"),
                       what="kopf to post the handler's event")
    assert (event["reason"], event["metadata"]["name"][:11]) == ("StudyStarted", "kopf-event-")


def test_deletion_waits_for_the_operators_finalizer(cluster, operator):
    cluster.create(example_study())
    assert wait_until_handled(cluster, "digits")["metadata"]["finalizers"]
    marked = cluster.delete(STUDIES, "default", "digits")
    assert marked["metadata"]["deletionTimestamp"]

    wait_for(lambda: cluster.get(STUDIES, "default", "digits") is None, what="the finalizer to be removed")
    assert deleted_studies == ["digits"]


def test_status_patches_are_visible_and_isolated(cluster, operator):
    cluster.create(example_study())
    study = wait_until_handled(cluster, "digits")
    assert study["status"]["phase"] == "Running"

    cluster.patch_status(STUDIES, "default", "digits", {"phase": "Succeeded", "observedGeneration": 1})
    ignored = cluster.patch(STUDIES, "default", "digits", {"status": {"phase": "Failed"}})
    assert ignored["status"] == {"phase": "Succeeded", "observedGeneration": 1}
    assert cluster.get(STUDIES, "default", "digits")["status"]["phase"] == "Succeeded"


def test_fields_unknown_to_the_crd_schema_are_pruned(cluster):
    manifest = example_study()
    manifest["spec"]["budget"]["maxTrails"] = 3  # a typo a real server silently drops
    created = cluster.create(manifest)
    patched = cluster.patch_status(STUDIES, "default", "digits", {"phase": "Running", "handler": {"x": 1}})

    assert "maxTrails" not in created["spec"]["budget"]
    assert patched["status"] == {"phase": "Running"}
    assert cluster.pruned_fields == [("hyperparameterstudies", "digits", "spec.budget.maxTrails"),
                                     ("hyperparameterstudies", "digits", "status.handler")]


def test_generation_counts_spec_changes_only(cluster):
    created = cluster.create(example_study())
    meta = created["metadata"]
    assert (meta["generation"], meta["namespace"]) == (1, "default")
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0

    after_status = cluster.patch_status(STUDIES, "default", "digits", {"phase": "Running"})
    after_labels = cluster.patch(STUDIES, "default", "digits", {"metadata": {"labels": {"team": "a"}}})
    after_spec = cluster.patch(STUDIES, "default", "digits", {"spec": {"budget": {"maxTrials": 20}}})
    no_op = cluster.patch(STUDIES, "default", "digits", {"spec": {"budget": {"maxTrials": 20}}})

    assert [o["metadata"]["generation"] for o in (after_status, after_labels, after_spec)] == [1, 1, 2]
    versions = [int(o["metadata"]["resourceVersion"]) for o in (created, after_status, after_labels, after_spec)]
    assert versions == sorted(set(versions))
    assert no_op["metadata"]["resourceVersion"] == after_spec["metadata"]["resourceVersion"]


def test_label_and_field_selectors(cluster):
    for name, labels in [("a", {"app": "x", "tier": "web"}), ("b", {"app": "x"}), ("c", {"app": "y"})]:
        cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}})

    def names(**selectors):
        return [o["metadata"]["name"] for o in cluster.list("v1/configmaps", "default", **selectors)]

    assert names(label_selector="app=x") == ["a", "b"]
    assert names(label_selector="app=x,tier=web") == ["a"]
    assert names(label_selector="tier") == ["a"]
    assert names(label_selector="!tier") == ["b", "c"]
    assert names(label_selector="app!=x") == ["c"]
    assert names(label_selector="app in (x,y),tier notin (web)") == ["b", "c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names() == ["a", "b", "c"]
    assert cluster.list("v1/configmaps", "elsewhere") == []


def test_server_errors_and_naming(cluster):
    cluster.create(example_study())
    with pytest.raises(ApiError) as duplicate:
        cluster.create(example_study())
    assert (duplicate.value.status, duplicate.value.reason) == (409, "AlreadyExists")
    assert cluster.get(STUDIES, "default", "absent") is None
    with pytest.raises(ApiError) as missing:
        cluster.patch(STUDIES, "default", "absent", {"spec": {}})
    assert missing.value.status == 404

    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
             {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]
    with pytest.raises(ApiError) as failed_test:
        cluster.patch(STUDIES, "default", "digits", stale, patch_type="json")
    assert failed_test.value.status == 422

    generated = cluster.create({"apiVersion": "v1", "kind": "Event",
                                "metadata": {"generateName": "kopf-event-"}}, namespace="team-a")
    assert generated["metadata"]["name"].startswith("kopf-event-")
    assert generated["metadata"]["namespace"] == "team-a"
    listing = cluster.request("GET", cluster.path(STUDIES))
    assert (listing["kind"], listing["apiVersion"]) == ("HyperparameterStudyList", "kubetune.io/v1alpha1")
    assert int(listing["metadata"]["resourceVersion"]) >= int(generated["metadata"]["resourceVersion"])


def test_watch_resumes_from_a_resource_version(cluster):
    first = cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first"}})
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "second"}})
    cluster.delete("v1/configmaps", "default", "second")

    def watch(**params) -> list[tuple[str, str]]:
        """The events the stream sends until (and with) the marker change made after it opens."""
        url = cluster.url + cluster.path("v1/configmaps", "default")
        with requests.get(url, params={"watch": "true", "timeoutSeconds": "10", **params},
                          stream=True, timeout=10) as response:
            cluster.patch("v1/configmaps", "default", "first", {"data": {"marker": str(len(seen))}})
            events = []
            for line in response.iter_lines():
                event = json.loads(line)
                events.append((event["type"], event["object"]["metadata"]["name"]))
                if event["object"].get("data", {}).get("marker") == str(len(seen)):
                    break
        seen.append(events)
        return events

    seen: list[list[tuple[str, str]]] = []
    since = first["metadata"]["resourceVersion"]
    assert watch(resourceVersion=since) == [("ADDED", "second"), ("DELETED", "second"), ("MODIFIED", "first")]
    assert watch() == [("ADDED", "first"), ("MODIFIED", "first")]
    assert watch(resourceVersion=since, fieldSelector="metadata.name!=second") == [
        ("MODIFIED", "first"), ("MODIFIED", "first"), ("MODIFIED", "first")]


def test_kubectl_apply_get_delete(cluster):
    applied = cluster.kubectl("apply", "-f", str(EXAMPLE), "--validate=false")
    assert "hyperparameterstudy.kubetune.io/digits created" in applied.stdout

    cluster.patch_status(STUDIES, "default", "digits",
                         {"phase": "Running", "trials": {"total": 3}, "bestTrial": {"objective": 0.25}})
    header, row = cluster.kubectl("get", "hps").stdout.splitlines()  # the CRD's printer columns
    assert header.split() == ["NAME", "PHASE", "BEST", "TRIALS", "AGE"]
    assert row.split()[:4] == ["digits", "Running", "0.25", "3"]
    listed = json.loads(cluster.kubectl("get", "hyperparameterstudies", "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["digits"]

    reapplied = cluster.kubectl("apply", "-f", str(EXAMPLE), "--validate=false")
    assert "unchanged" in reapplied.stdout

    # kubectl wait lists, then watches from the list's resourceVersion.
    waiting = subprocess.Popen(cluster.kubectl_command(
        "wait", "--for=jsonpath={.status.phase}=Succeeded", "hps/digits", "--timeout=20s"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: [r for r in cluster.request_log
                      if r.params.get("watch") == "true" and "kubectl" in r.headers.get("User-Agent", "")],
             what="kubectl to watch the study")
    cluster.patch_status(STUDIES, "default", "digits", {"phase": "Succeeded"})
    assert waiting.wait(timeout=30) == 0, waiting.stderr.read()

    deleted = cluster.kubectl("delete", "-f", str(EXAMPLE))
    assert "deleted" in deleted.stdout
    assert cluster.get(STUDIES, "default", "digits") is None


def test_operator_restart_does_not_rerun_create_handlers(cluster, operator):
    cluster.create(example_study())
    wait_until_handled(cluster, "digits")
    operator.stop()
    operator.start()
    barrier(cluster, "digits", max_trials=14)

    assert created_studies == ["digits"]


def test_collect_garbage_deletes_dependents_of_deleted_owners(cluster):
    # The emulator has no garbage collector: this test plays it with collect_garbage().
    def owned_by(owner: dict) -> list[dict]:
        meta = owner["metadata"]
        return [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                 "name": meta["name"], "uid": meta["uid"]}]

    study = cluster.create(example_study())
    job = cluster.create({"apiVersion": "batch/v1", "kind": "Job",
                          "metadata": {"name": "digits-1", "ownerReferences": owned_by(study)}})
    cluster.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "digits-1-abcde", "ownerReferences": owned_by(job)}})
    keeper = cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keeper"}})
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "kept", "ownerReferences": owned_by(keeper)}})

    assert cluster.collect_garbage() == []
    cluster.delete(STUDIES, "default", "digits")
    assert cluster.collect_garbage() == [("batch/v1/jobs", "default", "digits-1"),
                                         ("v1/pods", "default", "digits-1-abcde")]
    assert cluster.list("batch/v1/jobs") == [] and cluster.list("v1/pods") == []
    assert [cm["metadata"]["name"] for cm in cluster.list("v1/configmaps")] == ["keeper", "kept"]
