"""The only module that talks to the Kubernetes API (besides kopf's own watching).

Thin, idempotent calls through the official client: creates tolerate AlreadyExists and
deletes tolerate NotFound, so a reconcile that is repeated (after a restart, or because an
event arrived twice) changes nothing the second time.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api.models import GROUP, VERSION

STUDIES = "hyperparameterstudies"
TRIALS = "hyperparametertrials"


class KubeApi:
    def __init__(self, api_client: Optional[client.ApiClient] = None) -> None:
        self.api_client = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)

    def create_trial(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a trial object unless it exists; returns the object as stored (with its uid)."""
        meta = body["metadata"]
        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], TRIALS, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], TRIALS, meta["name"])

    def create_job(self, body: Mapping[str, Any]) -> bool:
        try:
            self.batch.create_namespaced_job(body["metadata"]["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its Pods (stopping the trial's containers)."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_trial_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._patch_status(namespace, TRIALS, name, status)

    def patch_study_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._patch_status(namespace, STUDIES, name, status)

    def _patch_status(self, namespace: str, plural: str, name: str, status: Mapping[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": dict(status)})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing left to update
                raise

    def annotate_study(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, STUDIES, name, {"metadata": {"annotations": dict(annotations)}})
