"""The divergence guard: a trial whose metrics go NaN or infinite, or whose loss grows past a
multiple of its first value, has diverged; it stops at once with reason Diverged.

On by default and composed with any rule (spec.earlyStopping.divergence). It looks at every
report, not just the latest, so a restarted runner or operator reaches the same verdict.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from kubetune.stoppers.base import DIVERGED, Decision, Stopper, fmt, number_setting
from kubetune.trials import TrialRecord

DEFAULT_FACTOR = 10.0


class DivergenceGuard(Stopper):
    name = "divergence"
    settings_help = {
        "factor": f"a loss above this multiple of its first reported value has diverged, default {DEFAULT_FACTOR:g}",
    }

    def __init__(self, objective, settings) -> None:
        super().__init__(objective, settings)
        self.factor = number_setting(settings, "factor", DEFAULT_FACTOR, 1.0)

    def watches_growth(self, metric: str) -> bool:
        """Losses: the objective when minimised, and every metric with 'loss' in its name."""
        return "loss" in metric.lower() or (metric == self.objective.metric and self.objective.goal == "minimize")

    def decide(self, trial: TrialRecord, trials: Sequence[TrialRecord]) -> Optional[Decision]:
        first: dict[str, tuple[Optional[int], float]] = {}
        for report in trial.history:
            for metric, value in sorted(report.metrics.items()):
                value = float(value)
                if not math.isfinite(value):
                    return Decision(DIVERGED, f"divergence guard at step {report.step}: {metric} is {value}")
                if not self.watches_growth(metric):
                    continue
                if metric not in first:
                    first[metric] = (report.step, value)
                    continue
                first_step, first_value = first[metric]
                if first_value > 0 and value > self.factor * first_value:
                    return Decision(DIVERGED, (
                        f"divergence guard at step {report.step}: {metric} {fmt(value)} is more than "
                        f"{self.factor:g}x its first value {fmt(first_value)} (step {first_step})"))
        return None
