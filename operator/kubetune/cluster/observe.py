"""Reading a trial's Job and Pods: what phase the trial is in, and why.

Pure functions over the objects as the API server returns them (plain dicts), so every
Kubernetes failure mode can be tested without a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

# A pod stuck on these never starts; retrying the same spec cannot help, so the trial fails.
TERMINAL_WAITING_REASONS = frozenset({
    "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
})
MESSAGE_LIMIT = 1024
# Job and Pod events arrive on separate watches, so a finished Job can be seen before its Pod's
# final state (which holds the trial's result). Wait this long for the Pod before giving up on it.
POD_LAG_SECONDS = 30.0


@dataclass(frozen=True)
class JobObservation:
    phase: str  # Pending, Running, Succeeded or Failed
    reason: Optional[str] = None
    message: Optional[str] = None
    #: The primary container's termination message (the SDK's JSON, or a log tail).
    termination_message: Optional[str] = None
    #: The scheduler's explanation while the pod cannot be placed (for example no free GPU).
    unschedulable: Optional[str] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None


def _condition(obj: Mapping[str, Any], type_: str) -> Optional[Mapping[str, Any]]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return condition
    return None


def _latest(pods: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    if not pods:
        return None
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))


def _container_status(pod: Optional[Mapping[str, Any]], container: str) -> Mapping[str, Any]:
    if pod is None:
        return {}
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return status
    return {}


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated") or {}


def _clip(text: Optional[str]) -> Optional[str]:
    if not text:
        return None
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else "..." + text[-MESSAGE_LIMIT:]


def seconds_since(stamp: Optional[str], now: datetime) -> float:
    """Seconds from an RFC 3339 timestamp to `now`; 0 when missing, unreadable or in the future."""
    if not stamp:
        return 0.0
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - then).total_seconds())


def observe_job(
    job: Optional[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], container: str, now: datetime
) -> JobObservation:
    """The trial's phase from its Job and that Job's Pods; `container` is the primary one."""
    if job is None:
        return JobObservation("Pending", "JobNotCreated")
    status = job.get("status") or {}
    pod = _latest(pods)
    terminated = _terminated(_container_status(pod, container))
    termination = terminated.get("message")
    times = {"start_time": status.get("startTime"), "completion_time": status.get("completionTime")}

    complete = _condition(job, "Complete")
    failed = _condition(job, "Failed")
    finished = next((c for c in (complete, failed) if c is not None and c.get("status") == "True"), None)
    if (finished is not None and not terminated and finished.get("reason") != "DeadlineExceeded"
            and seconds_since(finished.get("lastTransitionTime"), now) < POD_LAG_SECONDS):
        return JobObservation("Running", "AwaitingPodStatus", None, None, **times)
    if finished is complete and complete is not None:
        return JobObservation("Succeeded", "Completed", None, termination, **times)
    if finished is not None:
        if failed.get("reason") == "DeadlineExceeded":
            return JobObservation("Failed", "DeadlineExceeded", _clip(failed.get("message")), termination, **times)
        if terminated.get("reason") == "OOMKilled":
            return JobObservation("Failed", "OOMKilled",
                                  "the trial's container ran out of memory; raise its memory limit or lower the batch size",
                                  termination, **times)
        exit_code = terminated.get("exitCode")
        detail = _error_text(termination) or failed.get("message") or ""
        prefix = f"exit code {exit_code}" if exit_code is not None else (failed.get("reason") or "failed")
        return JobObservation("Failed", "Error", _clip(f"{prefix}: {detail}" if detail else prefix), termination, **times)

    waiting = (_container_status(pod, container).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in TERMINAL_WAITING_REASONS:
        return JobObservation("Failed", waiting["reason"], _clip(waiting.get("message")), None, **times)
    if pod is not None:
        scheduled = _condition(pod, "PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return JobObservation("Pending", "Unschedulable", _clip(scheduled.get("message")), None,
                                  unschedulable=_clip(scheduled.get("message")), **times)
        if (pod.get("status") or {}).get("phase") == "Running":
            return JobObservation("Running", None, None, None, **times)
        if waiting.get("reason"):
            return JobObservation("Pending", waiting["reason"], _clip(waiting.get("message")), None, **times)
    return JobObservation("Pending", None, None, None, **times)


def parse_termination(text: Optional[str]) -> Optional[dict[str, Any]]:
    """The SDK's final record ({"metrics", "step", "history"}), or None for anything else."""
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        return None
    return record


def _error_text(termination: Optional[str]) -> Optional[str]:
    """A failed container's message: its log tail, unless it is the SDK's metrics record."""
    if not termination or parse_termination(termination) is not None:
        return None
    lines = [line for line in termination.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
