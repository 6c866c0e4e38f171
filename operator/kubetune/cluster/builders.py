"""Pure builders of the objects the operator creates: a HyperparameterTrial per trial and a
batch/v1 Job per trial. Plain dicts in, plain dicts out; owner references are set here so
that deleting a study cascades to its trials and their Jobs and Pods.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from kubetune import template
from kubetune.api.models import API_VERSION, HyperparameterStudy, TrialSpec
from kubetune.trial import DEFAULT_METRICS_PORT

STUDY_LABEL = "kubetune.io/study"
TRIAL_LABEL = "kubetune.io/trial"
TRIAL_INDEX_ANNOTATION = "kubetune.io/trial-index"


def owner_reference(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_trial(
    study: HyperparameterStudy,
    study_body: Mapping[str, Any],
    name: str,
    spec: TrialSpec,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "HyperparameterTrial",
        "metadata": {
            "name": name,
            "namespace": study.metadata.namespace,
            "labels": {STUDY_LABEL: study.metadata.name, TRIAL_LABEL: name},
            "ownerReferences": [owner_reference(study_body, "HyperparameterStudy")],
        },
        "spec": spec.to_wire(),
    }


def _quantities_as_strings(container: dict[str, Any]) -> None:
    """`nvidia.com/gpu: 1` is valid YAML for a quantity, but the API's type is a string."""
    for kind in ("limits", "requests"):
        amounts = (container.get("resources") or {}).get(kind)
        if amounts:
            container["resources"][kind] = {k: str(v) for k, v in amounts.items()}


def build_job(
    study: HyperparameterStudy,
    trial_body: Mapping[str, Any],
    metrics_port: int = DEFAULT_METRICS_PORT,
) -> dict[str, Any]:
    """The Job that runs one trial, from the study's trialTemplate.

    Placeholders are substituted in every container; the primary container also gets the
    KUBETUNE_* environment and a declared metrics port. Resources are copied as written, so
    GPU limits reach the scheduler. restartPolicy is Never: a retry is a new pod (the Job's
    backoffLimit), which keeps each attempt's logs and termination message.
    """
    name = trial_body["metadata"]["name"]
    spec = TrialSpec.model_validate(trial_body["spec"])
    trial_template = study.spec.trial_template
    values = template.placeholder_values(study, name, spec)
    labels = {STUDY_LABEL: study.metadata.name, TRIAL_LABEL: name}

    pod_template = trial_template.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    pod_template = copy.deepcopy(pod_template)
    metadata = pod_template.setdefault("metadata", {})
    metadata["labels"] = {**metadata.get("labels", {}), **labels}
    metadata["annotations"] = {
        **metadata.get("annotations", {}),
        # For Prometheus setups that discover pods by annotation rather than a PodMonitor.
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }
    pod_spec = pod_template["spec"]
    pod_spec["restartPolicy"] = "Never"
    primary_name = trial_template.primary_container.name
    kubetune_env = template.trial_environment(study, name, spec, metrics_port)
    for container in pod_spec["containers"]:
        _quantities_as_strings(container)
        for key in ("command", "args"):
            if container.get(key) is not None:
                container[key] = [template.substitute(text, values) for text in container[key]]
        for var in container.get("env", []):
            if var.get("value") is not None:
                var["value"] = template.substitute(var["value"], values)
        if container["name"] != primary_name:
            continue
        own = {var["name"] for var in container.get("env", [])}
        container["env"] = container.get("env", []) + [
            {"name": k, "value": v} for k, v in kubetune_env.items() if k not in own
        ]
        ports = container.setdefault("ports", [])
        if not any(p.get("containerPort") == metrics_port for p in ports):
            ports.append({"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"})
        # If the trainer dies before writing its result, the log tail becomes the message.
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")

    job_spec: dict[str, Any] = {
        "backoffLimit": trial_template.retries,
        "template": pod_template,
    }
    if trial_template.timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = trial_template.timeout_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": study.metadata.namespace,
            "labels": labels,
            "annotations": {TRIAL_INDEX_ANNOTATION: str(spec.index)},
            "ownerReferences": [owner_reference(trial_body, "HyperparameterTrial")],
        },
        "spec": job_spec,
    }
