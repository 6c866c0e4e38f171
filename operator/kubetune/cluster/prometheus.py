"""Reading trial metrics from Prometheus's HTTP API: one query per study per reconcile.

Trials expose kubetune_trial_metric{study,trial,namespace,metric} and kubetune_trial_step;
Prometheus scrapes their pods. A finished pod's series go stale, so the query asks for the
last value over the study's lifetime (last_over_time), and the step series is relabelled so
both come back from a single query.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

from kubetune.trial import METRIC_NAME, STEP_NAME

STEP_LABEL_VALUE = "__step__"
MAX_WINDOW_SECONDS = 14 * 24 * 3600


class PrometheusUnavailable(Exception):
    """Prometheus could not answer; the caller falls back to termination messages."""


@dataclass
class TrialMetrics:
    metrics: dict[str, float] = field(default_factory=dict)
    step: Optional[int] = None


def study_query(namespace: str, study: str, window_seconds: float) -> str:
    window = int(min(max(window_seconds, 60), MAX_WINDOW_SECONDS))
    selector = f'{{study="{study}",namespace="{namespace}"}}'
    return (
        f"last_over_time({METRIC_NAME}{selector}[{window}s])"
        f' or label_replace(last_over_time({STEP_NAME}{selector}[{window}s]), "metric", "{STEP_LABEL_VALUE}", "", "")'
    )


def parse_result(data: Any) -> dict[str, TrialMetrics]:
    """Trial name -> its latest metrics and step, from a /api/v1/query response body."""
    if not isinstance(data, dict) or data.get("status") != "success":
        raise PrometheusUnavailable(f"unexpected answer: {str(data)[:200]}")
    result = data.get("data", {}).get("result", [])
    trials: dict[str, TrialMetrics] = {}
    for series in result:
        labels = series.get("metric", {})
        trial, metric = labels.get("trial"), labels.get("metric")
        if not trial or not metric:
            continue
        value = float(series["value"][1])
        entry = trials.setdefault(trial, TrialMetrics())
        if metric == STEP_LABEL_VALUE:
            if math.isfinite(value):
                entry.step = max(entry.step or 0, int(value))
        else:
            entry.metrics[metric] = value
    return trials


class PrometheusReader:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def study_metrics(self, namespace: str, study: str, window_seconds: float) -> dict[str, TrialMetrics]:
        query = urllib.parse.urlencode({"query": study_query(namespace, study, window_seconds)})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=self.timeout) as response:
                data = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise PrometheusUnavailable(f"{self.url}: {exc}") from None
        return parse_result(data)
