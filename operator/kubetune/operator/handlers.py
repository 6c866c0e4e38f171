"""kopf handlers: thin wiring between Kubernetes events and the Reconciler.

Each live study has a daemon that reconciles it whenever something it depends on changes
(its spec, a trial, a Job, a Pod) and at least every `resync_seconds` otherwise, so a
missed event delays nothing for long and changes nothing. Trials, Jobs and Pods are kept in
kopf indexes fed by watches: a reconcile reads memory, never LISTs the API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import logging
import os
from datetime import datetime, timezone
from typing import Any, Mapping

import kopf
import kubernetes

from kubetune.api.models import GROUP, VERSION
from kubetune.cluster.builders import STUDY_LABEL, TRIAL_LABEL
from kubetune.cluster.kube import STUDIES, TRIALS, KubeApi
from kubetune.operator import metrics
from kubetune.operator.reconcile import OperatorConfig, Reconciler, StudyMemory

# After an error, the next attempt waits this long (the API server may be restarting).
ERROR_BACKOFF_SECONDS = 5.0
RECONCILE_THREADS = 16


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations under our prefix: .status is a typed contract
    # that only the reconciler writes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    # kopf would post an event for every handler run; we post meaningful transitions ourselves.
    settings.posting.level = logging.WARNING
    # One replica (the chart's Deployment uses the Recreate strategy), so no peering CRD is needed.
    settings.peering.standalone = True
    # kopf's own pool, for its synchronous handlers (the indexers).
    settings.execution.max_workers = 4
    # Reconnect watches regularly so a silently broken connection cannot stall a study for long.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    config: OperatorConfig = getattr(memo, "config", None) or OperatorConfig()
    memo.config = config
    memo.wakers = {}
    # Reconciles run in threads of their own (strategy fits and API calls): asyncio's default
    # pool has only CPUs + 4 threads, which would queue studies behind each other.
    memo.reconcile_pool = concurrent.futures.ThreadPoolExecutor(RECONCILE_THREADS, thread_name_prefix="reconcile")
    _load_kube_config()
    memo.reconciler = Reconciler(KubeApi(), config)
    logger.info("kubetune operator: prometheus=%s resync=%ss", config.prometheus_url or "(none)", config.resync_seconds)


def _load_kube_config() -> None:
    """In a pod, the service account; elsewhere $KUBECONFIG or ~/.kube/config, as kubectl does."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # Read KUBECONFIG now: the client library reads it once, when it is imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def _plain(body: Mapping[str, Any], *parts: str) -> dict[str, Any]:
    """A detached copy of the parts of an object the reconciler reads (indexes keep these)."""
    return {part: copy.deepcopy(dict(body.get(part) or {})) for part in parts}


@kopf.index(GROUP, VERSION, TRIALS)
def trials_by_study(namespace: str, spec: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> dict:
    return {(namespace, spec.get("study")): _plain(body, "metadata", "spec", "status")}


@kopf.index("batch", "v1", "jobs", labels={STUDY_LABEL: kopf.PRESENT})
def jobs_by_study(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any) -> dict:
    return {(namespace, labels[STUDY_LABEL]): _plain(body, "metadata", "status")}


@kopf.index("", "v1", "pods", labels={STUDY_LABEL: kopf.PRESENT, TRIAL_LABEL: kopf.PRESENT})
def pods_by_study(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any) -> dict:
    return {(namespace, labels[STUDY_LABEL]): _plain(body, "metadata", "status")}


def _wake(memo: kopf.Memo, namespace: str, study: str) -> None:
    waker = memo.wakers.get((namespace, study))
    if waker is not None:
        waker.set()


# The wake-up handlers are coroutines on purpose: kopf runs plain functions in worker threads,
# and an asyncio.Event set from another thread does not wake the daemon waiting on it.
@kopf.on.event(GROUP, VERSION, TRIALS)
async def trial_changed(namespace: str, spec: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, spec.get("study"))


@kopf.on.event("batch", "v1", "jobs", labels={STUDY_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={STUDY_LABEL: kopf.PRESENT})
async def child_changed(namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, labels[STUDY_LABEL])


@kopf.on.event(GROUP, VERSION, STUDIES)
async def study_changed(namespace: str, name: str, meta: Mapping[str, Any], status: Mapping[str, Any],
                  memo: kopf.Memo, **_: Any) -> None:
    # Our own status writes come back as events too; only a new spec needs an early reconcile.
    if meta.get("generation") != status.get("observedGeneration"):
        _wake(memo, namespace, name)


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    memo.reconcile_pool.shutdown(wait=False, cancel_futures=True)


@kopf.on.delete(GROUP, VERSION, STUDIES, optional=True)
def study_deleted(namespace: str, name: str, **_: Any) -> None:
    # Trials, Jobs and Pods go with the study through owner references; only our series remain.
    metrics.forget_study(namespace, name)


@kopf.daemon(GROUP, VERSION, STUDIES, cancellation_timeout=1.0)
async def study_daemon(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: logging.Logger,
    trials_by_study: kopf.Index,
    jobs_by_study: kopf.Index,
    pods_by_study: kopf.Index,
    **_: Any,
) -> None:
    key = (namespace, name)
    waker = memo.wakers.setdefault(key, asyncio.Event())
    memory = StudyMemory()
    loop = asyncio.get_running_loop()
    try:
        while not stopped:
            waker.clear()
            trials = list(trials_by_study.get(key, []))
            jobs = {job["metadata"]["name"]: job for job in jobs_by_study.get(key, [])}
            pods: dict[str, list[dict]] = {}
            for pod in pods_by_study.get(key, []):
                pods.setdefault(pod["metadata"]["labels"][TRIAL_LABEL], []).append(pod)
            snapshot = {"apiVersion": body["apiVersion"], "kind": body["kind"],
                        **_plain(body, "metadata", "spec", "status")}
            wait = memo.config.resync_seconds
            try:
                outcome = await loop.run_in_executor(memo.reconcile_pool, functools.partial(
                    memo.reconciler.reconcile, snapshot, trials, jobs, pods, datetime.now(timezone.utc), memory))
            except Exception:  # noqa: BLE001 - a study's error must not end its daemon
                logger.exception("reconcile of study %s/%s failed; retrying in %ss", namespace, name, ERROR_BACKOFF_SECONDS)
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                wait = ERROR_BACKOFF_SECONDS
            else:
                for type_, reason, message in outcome.events:
                    kopf.event(body, type=type_, reason=reason, message=message)
            try:
                await asyncio.wait_for(waker.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
    finally:
        memo.wakers.pop(key, None)
