"""One reconcile of one study: observe its trials, ask the engine, apply the plan.

Level-based and idempotent: everything is recomputed from the objects in the cluster (the
study, its HyperparameterTrials, their Jobs and Pods), names are deterministic and creates
tolerate AlreadyExists, so running it twice, or after an operator restart, is harmless.
It is synchronous on purpose and runs in a worker thread: strategy fits and API calls never
block the event loop that serves every other study.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

from pydantic import ValidationError

from kubetune.api.models import (
    IMMUTABLE_FIELDS,
    MAX_INTERMEDIATE_REPORTS,
    TERMINAL_TRIAL_PHASES,
    Condition,
    HyperparameterStudy,
    StudyStatus,
)
from kubetune.advice import advise
from kubetune.api.validation import StudyInvalid, parse_study
from kubetune.cluster import observe
from kubetune.cluster.builders import build_job, build_trial
from kubetune.cluster.kube import KubeApi
from kubetune.cluster.prometheus import PrometheusReader, PrometheusUnavailable, TrialMetrics
from kubetune.engine import Plan, invalid_status, plan, set_condition, timestamp
from kubetune.operator import metrics
from kubetune.stoppers import diverged
from kubetune.trials import Report, TrialRecord

SEARCH_SPACE_ANNOTATION = "kubetune.io/search-space"
PROMETHEUS_URL_ANNOTATION = "kubetune.io/prometheus-url"
# Applying a plan changes the trials; re-plan until nothing is left to do (bounded).
MAX_PLAN_ROUNDS = 4


@dataclass
class OperatorConfig:
    prometheus_url: Optional[str] = None
    resync_seconds: float = 10.0
    trial_metrics_port: int = 9464


@dataclass
class Outcome:
    phase: str
    #: Kubernetes events to post on the study: (type, reason, message).
    events: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class StudyMemory:
    """What this operator wrote for one study that its watches may not have shown yet.

    Every write comes back as a watch event, but a reconcile woken by one write (a trial's
    status) can run before the event of another (the study's status) arrives. Without this
    memory it would act on the older state: write the same status again, post the same event
    twice, create a trial or Job that exists. Entries are keyed by the resourceVersion they
    were written over and stop applying as soon as the watches show a newer version.
    """

    study: tuple[Optional[str], Optional[dict]] = (None, None)  # (resourceVersion, status written)
    search_space: tuple[Optional[str], Optional[str]] = (None, None)  # (resourceVersion, annotation written)
    trials: dict[str, tuple[Optional[str], dict]] = field(default_factory=dict)
    created_trials: dict[str, dict] = field(default_factory=dict)
    created_jobs: set[str] = field(default_factory=set)

    def study_status(self, body: Mapping[str, Any]) -> Optional[dict]:
        version, status = self.study
        if status is not None and body["metadata"].get("resourceVersion") == version:
            return status
        return body.get("status")

    def search_space_annotation(self, body: Mapping[str, Any]) -> Optional[str]:
        version, written = self.search_space
        if written is not None and body["metadata"].get("resourceVersion") == version:
            return written
        return (body["metadata"].get("annotations") or {}).get(SEARCH_SPACE_ANNOTATION)

    def trial_status(self, trial: Mapping[str, Any]) -> dict:
        name = trial["metadata"]["name"]
        version, status = self.trials.get(name, (None, None))
        if status is not None and trial["metadata"].get("resourceVersion") == version:
            return dict(status)
        self.trials.pop(name, None)
        return dict(trial.get("status") or {})

    def with_created(self, trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The indexed trials plus those created here that the index does not show yet."""
        seen = {t["metadata"]["name"] for t in trials}
        for name in [n for n in self.created_trials if n in seen]:
            del self.created_trials[name]
        return list(trials) + list(self.created_trials.values())


@dataclass
class Observed:
    """What one look at a study's trials found."""

    records: list[TrialRecord]
    unschedulable: list[tuple[str, str]]  # (trial, the scheduler's message)
    metrics_error: Optional[str]
    newly_failed: list[TrialRecord]
    statuses: dict[str, dict] = field(default_factory=dict)  # each trial's status as observed


def immutable_digests(study: HyperparameterStudy) -> dict[str, str]:
    """A fingerprint of each immutable field that is set, to notice edits the API server let
    through (one without CEL): recorded on the study when first seen, compared ever after."""
    return {name: _digest(value) for name, value in study.spec.immutable_fields().items()}


def changed_fields(study: HyperparameterStudy, recorded: str, now: Mapping[str, str]) -> list[str]:
    """The immutable fields whose fingerprint in `now` (immutable_digests) differs from the
    recorded annotation's."""
    try:
        before = json.loads(recorded)
    except ValueError:
        before = None
    if not isinstance(before, dict):
        # Recorded by an older operator, which fingerprinted parameters and objective together.
        fields = study.spec.immutable_fields()
        same = recorded == _digest({"parameters": fields["parameters"], "objective": fields["objective"]})
        return [] if same else ["parameters", "objective"]
    return [name for name in IMMUTABLE_FIELDS if before.get(name) != now.get(name)]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def previous_status(body: Mapping[str, Any]) -> Optional[StudyStatus]:
    try:
        return StudyStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None  # written by something else (an older version): rebuilt from the trials


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    # JSON in the API server has no NaN or Infinity; a diverged value is left out.
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def remember(intermediate: Sequence[Mapping[str, Any]], step: int, values: Mapping[str, float]) -> list[dict]:
    """status.intermediate with the report of `step` added (or replaced), bounded.

    The operator sees one report per reconcile (the latest scrape), so steps reported between
    two reconciles are missing. Past MAX_INTERMEDIATE_REPORTS every other older report is
    dropped, always keeping the first (the divergence guard's reference) and the newest, so
    the curve keeps its shape over any number of steps.
    """
    entries = [dict(e) for e in intermediate if e.get("step") != step]
    entries.append({"step": step, "metrics": _finite(values)})
    entries.sort(key=lambda e: e["step"])
    while len(entries) > MAX_INTERMEDIATE_REPORTS:
        older, newest = entries[:-1], entries[-1]
        entries = older[::2] + [newest] if len(older) > 1 else entries[-MAX_INTERMEDIATE_REPORTS:]
    return entries


def history_of(status: Mapping[str, Any], scraped: Optional[TrialMetrics]) -> tuple[Report, ...]:
    """A trial's curve for the stoppers: status.intermediate, then this reconcile's scrape as
    read (NaN and Infinity included, which the status cannot hold)."""
    reports = [Report(e.get("step"), e.get("metrics") or {}) for e in status.get("intermediate") or []]
    if scraped is not None and scraped.metrics and status.get("phase") == "Running":
        reports = [r for r in reports if r.step != scraped.step] + [Report(scraped.step, dict(scraped.metrics))]
    return tuple(reports)


class Reconciler:
    def __init__(self, api: KubeApi, config: OperatorConfig) -> None:
        self.api = api
        self.config = config

    def reconcile(
        self,
        body: Mapping[str, Any],
        trials: Sequence[Mapping[str, Any]],
        jobs: Mapping[str, Mapping[str, Any]],
        pods: Mapping[str, Sequence[Mapping[str, Any]]],
        now: datetime,
        memory: Optional[StudyMemory] = None,
    ) -> Outcome:
        began = time.perf_counter()
        memory = memory or StudyMemory()
        body = {**body, "status": memory.study_status(body)}
        trials = memory.with_created(trials)
        memory.created_jobs.difference_update(jobs)  # the index shows them now
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = meta.get("generation")
        previous = previous_status(body)
        manifest = {k: v for k, v in body.items() if k != "status"}
        try:
            study = parse_study(manifest)
        except StudyInvalid as exc:
            return self._invalid(body, previous, memory, "InvalidSpec", exc.summary(), now)
        study.metadata.namespace = namespace
        recorded = memory.search_space_annotation(body)
        digests = immutable_digests(study)
        changed = changed_fields(study, recorded, digests) if recorded is not None else []
        if changed:
            return self._invalid(
                body, previous, memory, "ImmutableFieldChanged",
                f"{', '.join('spec.' + field for field in changed)} changed after the study started; its trials "
                "would no longer be comparable. Restore the original values, or create a new study for the change.", now)
        current = json.dumps(digests, sort_keys=True, separators=(",", ":"))
        if recorded != current:  # first seen, or recorded by an older operator
            self.api.annotate_study(namespace, name, {SEARCH_SPACE_ANNOTATION: current})
            memory.search_space = (meta.get("resourceVersion"), current)
        # Posted once, when the study is first seen (the annotation is written in the same step).
        advice_events = [("Normal", "TuningAdvice", str(a)) for a in advise(study)] if recorded is None else []

        observed = self._observe(study, trials, jobs, pods, now, memory)
        status_plan: Optional[Plan] = None
        records = observed.records
        for _ in range(MAX_PLAN_ROUNDS):
            planned_at = time.perf_counter()
            status_plan = plan(study, records, now, previous=previous)
            metrics.SUGGESTION_SECONDS.observe(time.perf_counter() - planned_at)
            if not status_plan.actions:
                break
            records = self._apply(study, body, status_plan, records, now, memory, observed.statuses)
        status = status_plan.status
        status.conditions += self._extra_conditions(previous, observed, generation, now)
        wire = status.to_wire()
        if wire != body.get("status"):
            self.api.patch_study_status(namespace, name, wire)
            memory.study = (meta.get("resourceVersion"), wire)
        counts = status.trials.model_dump()
        best = status.best_trial.objective if status.best_trial else None
        metrics.record_study(namespace, name, status.phase, counts, best)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - began)
        return Outcome(status.phase, advice_events + self._events(previous, status, observed))

    # -- observing ---------------------------------------------------------------------

    def _observe(self, study, trials, jobs, pods, now, memory: StudyMemory) -> Observed:
        namespace = study.metadata.namespace
        primary = study.spec.trial_template.primary_container.name
        active = [t for t in trials if (t.get("status") or {}).get("phase", "Pending") not in TERMINAL_TRIAL_PHASES]
        scraped: dict[str, TrialMetrics] = {}
        metrics_error = None
        url = (study.metadata.annotations or {}).get(PROMETHEUS_URL_ANNOTATION) or self.config.prometheus_url
        if active and url:
            started = min((t["metadata"].get("creationTimestamp") or "" for t in active), default="")
            window = observe.seconds_since(started, now) + 60
            try:
                scraped = PrometheusReader(url).study_metrics(namespace, study.metadata.name, window)
            except PrometheusUnavailable as exc:
                metrics_error = str(exc)
        records, unschedulable, newly_failed, statuses = [], [], [], {}
        for trial in sorted(trials, key=lambda t: t["spec"]["index"]):
            name = trial["metadata"]["name"]
            status = memory.trial_status(trial)
            if status.get("phase", "Pending") not in TERMINAL_TRIAL_PHASES:
                job = jobs.get(name)
                if job is None:
                    if name not in memory.created_jobs:
                        # The trial exists but its Job does not: the operator stopped between the two creates.
                        self.api.create_job(build_job(study, trial, self.config.trial_metrics_port))
                        memory.created_jobs.add(name)
                else:
                    # Peers for the divergence guard's first-report check: the trials before this one.
                    new = self._trial_status(study, status, job, pods.get(name, ()), scraped.get(name), primary, now,
                                             range_test="lrRangeTest" in trial["spec"],
                                             peers=[r for r in records if not r.range_test])
                    if new.get("unschedulable"):
                        unschedulable.append((name, new.pop("unschedulable")))
                    if new.get("phase") == "Failed" and new.get("reason") in observe.TERMINAL_WAITING_REASONS:
                        self.api.delete_job(namespace, name)  # it would wait for the image forever
                    if new != status:
                        self.api.patch_trial_status(namespace, name, new)
                        memory.trials[name] = (trial["metadata"].get("resourceVersion"), new)
                        if new.get("phase") == "Failed":
                            newly_failed.append(name)
                    status = new
            statuses[name] = status
            records.append(TrialRecord(
                name=name, index=trial["spec"]["index"], parameters=trial["spec"]["parameters"],
                phase=status.get("phase", "Pending"), metrics=status.get("metrics", {}),
                history=history_of(status, scraped.get(name)),
                reason=status.get("reason"), message=status.get("message"), rerun_of=trial["spec"].get("rerunOf"),
                stage=trial["spec"].get("stage"), range_test=trial["spec"].get("lrRangeTest") is not None,
            ))
        failed = [r for r in records if r.name in newly_failed]
        return Observed(records, unschedulable, metrics_error, failed, statuses)

    def _trial_status(self, study, status, job, pods, scraped: Optional[TrialMetrics], primary, now,
                      range_test: bool = False, peers: Sequence[TrialRecord] = ()) -> dict[str, Any]:
        observation = observe.observe_job(job, pods, primary, now)
        new = dict(status)
        job_status = job.get("status") or {}
        new.update({
            "phase": observation.phase,
            "jobName": job["metadata"]["name"],
            "attempts": sum(job_status.get(k) or 0 for k in ("active", "succeeded", "failed")),
        })
        for key, value in (("reason", observation.reason), ("message", observation.message),
                           ("startTime", observation.start_time), ("completionTime", observation.completion_time)):
            if value is not None:
                new[key] = value
            else:
                new.pop(key, None)
        values = dict(status.get("metrics") or {})
        if scraped is not None:
            values.update(scraped.metrics)
            if scraped.step is not None:
                new["step"] = scraped.step
                new["intermediate"] = remember(new.get("intermediate") or [], scraped.step, scraped.metrics)
        record = observe.parse_termination(observation.termination_message)
        if record is not None:
            # The trial's own final word: authoritative when Prometheus missed the last scrape.
            values.update(record["metrics"])
            if record.get("step") is not None:
                new["step"] = record["step"]
            new["reportedSteps"] = max(new.get("reportedSteps", 0), len(record.get("history") or []))
            # Its full curve replaces what the scrapes caught, for the other trials' stoppers.
            for report in record.get("history") or []:
                if isinstance(report, dict) and isinstance(report.get("step"), int) and isinstance(report.get("metrics"), dict):
                    new["intermediate"] = remember(new.get("intermediate") or [], report["step"], report["metrics"])
            if observation.phase == "Failed" and not range_test:
                history = tuple(Report(r.get("step"), r.get("metrics") or {}) for r in record.get("history") or []
                                if isinstance(r, dict))
                divergence = diverged(study, TrialRecord(job["metadata"]["name"], 0, {}, history=history), peers)
                if divergence is not None:
                    # The trainer saw its own divergence and exited: what the guard would have done.
                    new.update(phase="Pruned", reason=divergence.reason,
                               message=f"{divergence.message}; the trial then exited with an error")
        new["metrics"] = _finite(values)
        # A range test reports its curve (lr, loss), not the objective.
        objective = "loss" if range_test else study.spec.objective.metric
        if observation.phase == "Succeeded" and objective not in new["metrics"]:
            new.update(phase="Failed", reason="NoMetrics", message=(
                f"the trial finished without reporting a finite {objective}; it reported "
                f"{', '.join(sorted(new['metrics'])) or 'nothing'} (call kubetune.trial.report({objective}=...))"))
        if observation.unschedulable:
            new["unschedulable"] = observation.unschedulable
        return new

    # -- acting ------------------------------------------------------------------------

    def _apply(self, study, body, result: Plan, records: list[TrialRecord], now, memory: StudyMemory,
               statuses: Mapping[str, dict]) -> list[TrialRecord]:
        namespace = study.metadata.namespace
        by_name = {r.name: r for r in records}
        for stop in result.stops():
            self.api.delete_job(namespace, stop.name)
            stopped = {"phase": stop.phase, "reason": stop.reason, "message": stop.message,
                       "completionTime": timestamp(now)}
            self.api.patch_trial_status(namespace, stop.name, stopped)
            version = memory.trials.get(stop.name, (None, None))[0]
            # The patch merges into the status: metrics and the curve stay, for the other trials' stoppers.
            memory.trials[stop.name] = (version, {**statuses.get(stop.name, {}), **stopped})
            by_name[stop.name] = replace(by_name[stop.name], phase=stop.phase, reason=stop.reason, message=stop.message)
        for create in result.creates():
            created = self.api.create_trial(build_trial(study, body, create.name, create.spec(study)))
            memory.created_trials[create.name] = created
            self.api.create_job(build_job(study, created, self.config.trial_metrics_port))
            memory.created_jobs.add(create.name)
            by_name[create.name] = create.record()
        return sorted(by_name.values(), key=lambda r: r.index)

    def _invalid(self, body, previous, memory: StudyMemory, reason: str, message: str, now) -> Outcome:
        meta = body["metadata"]
        status = invalid_status(previous, message, meta.get("generation"), now)
        status.conditions[0].reason = reason
        wire = status.to_wire()
        if wire != body.get("status"):
            self.api.patch_study_status(meta["namespace"], meta["name"], wire)
            memory.study = (meta.get("resourceVersion"), wire)
        events = []
        old = previous.condition("Ready") if previous else None
        if old is None or old.status != "False" or old.message != message:
            events.append(("Warning", reason, message))
        return Outcome(status.phase, events)

    # -- status extras and events --------------------------------------------------------

    def _extra_conditions(self, previous, observed: Observed, generation, now) -> list[Condition]:
        old = previous.conditions if previous else []
        unschedulable = observed.unschedulable
        degraded = observed.metrics_error
        return [
            set_condition(old, "TrialsUnschedulable", bool(unschedulable),
                          "Unschedulable" if unschedulable else "AllScheduled",
                          f"{len(unschedulable)} trial pods cannot be scheduled; {unschedulable[0][0]}: {unschedulable[0][1]}"
                          if unschedulable else "", generation, now),
            set_condition(old, "MetricsDegraded", degraded is not None,
                          "PrometheusUnavailable" if degraded else "MetricsAvailable",
                          f"cannot query Prometheus ({degraded}); final results come from the trials' termination messages"
                          if degraded else "", generation, now),
        ]

    def _events(self, previous: Optional[StudyStatus], status: StudyStatus, observed) -> list[tuple[str, str, str]]:
        events = []
        old_phase = previous.phase if previous else None
        if status.phase != old_phase:
            condition = status.condition(status.phase)
            message = condition.message if condition and condition.message else f"study is {status.phase}"
            kind = "Warning" if status.phase == "Failed" else "Normal"
            events.append((kind, condition.reason if condition else status.phase, message))
        for record in observed.newly_failed:
            events.append(("Warning", "TrialFailed", f"{record.name}: {record.reason}: {(record.message or '')[:200]}"))
        old_best = previous.best_trial.name if previous and previous.best_trial else None
        if status.best_trial and status.best_trial.name != old_best:
            events.append(("Normal", "NewBestTrial",
                           f"{status.best_trial.name}: objective {status.best_trial.objective:.6g}"))
        return events


