"""The operator's own Prometheus metrics (names as in DESIGN.md; the Grafana dashboards use them)."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from prometheus_client import Counter as CounterMetric, Gauge, Histogram

STUDIES = Gauge("kubetune_studies", "Studies watched by this operator, by phase.", ["phase"])
TRIALS = Gauge("kubetune_trials", "Trials of a study, by phase.", ["namespace", "study", "phase"])
BEST_OBJECTIVE = Gauge("kubetune_study_best_objective", "Objective value of a study's best trial.", ["namespace", "study"])
SUGGESTION_SECONDS = Histogram(
    "kubetune_suggestion_duration_seconds", "Time the study engine took to plan (including strategy suggestions).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds", "Time one reconcile of one study took, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = CounterMetric("kubetune_reconcile_errors", "Reconciles that ended in an error.", ["namespace", "study"])

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
TRIAL_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Pruned", "Stopped")
_study_phases: dict[tuple[str, str], str] = {}


def _count_studies() -> None:
    counts = Counter(_study_phases.values())
    for phase in PHASES:
        STUDIES.labels(phase).set(counts[phase])


def record_study(namespace: str, name: str, phase: str, counts: dict[str, int], best: Optional[float]) -> None:
    _study_phases[(namespace, name)] = phase
    _count_studies()
    for p in TRIAL_PHASES:  # phases as the API spells them; counts are keyed in lower case
        TRIALS.labels(namespace, name, p).set(counts.get(p.lower(), 0))
    if best is not None:
        BEST_OBJECTIVE.labels(namespace, name).set(best)


def forget_study(namespace: str, name: str) -> None:
    """Drop a deleted study's series, so dashboards do not show it forever."""
    _study_phases.pop((namespace, name), None)
    _count_studies()
    for metric, labels in [(TRIALS, (namespace, name, p)) for p in TRIAL_PHASES] + [
        (BEST_OBJECTIVE, (namespace, name)), (RECONCILE_ERRORS, (namespace, name))]:
        try:
            metric.remove(*labels)
        except KeyError:
            pass
