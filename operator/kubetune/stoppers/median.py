"""The median rule: stop a trial whose best value so far is worse than the median of what
completed trials had reached at the same step (Golovin et al. 2017, Google Vizier; Optuna's
MedianPruner)."""

from __future__ import annotations

from typing import Optional, Sequence

from kubetune.stoppers.base import EARLY_STOPPED, Decision, Stopper, int_setting, median_without, value_at_or_before
from kubetune.trials import TrialRecord


class MedianStopper(Stopper):
    name = "median"
    settings_help = {
        "warmupSteps": "steps a trial always runs before the rule applies to it, default 0",
        "minTrials": "completed trials needed at a step before the rule applies, default 5",
    }

    def __init__(self, objective, settings) -> None:
        super().__init__(objective, settings)
        self.warmup_steps = int_setting(settings, "warmupSteps", 0, 0)
        self.min_trials = int_setting(settings, "minTrials", 5, 1)

    def decide(self, trial: TrialRecord, trials: Sequence[TrialRecord]) -> Optional[Decision]:
        points = self.curve(trial)
        if not points:
            return None
        step = points[-1][0]
        if step <= self.warmup_steps:
            return None
        by_name, ordered = self.per_round(trials, ("completed at", step), lambda: self._completed_at(trials, step))
        own = by_name.get(trial.name)  # a trial is never compared with itself
        count = len(ordered) - (own is not None)
        if count < self.min_trials:
            return None
        best = min(self.score(v) for _, v in points)
        median = median_without(ordered, own)
        if best <= median:
            return None
        metric = self.objective.metric
        return Decision(EARLY_STOPPED, (
            f"median rule at step {step}: best {metric} {self.shown(best)} is worse than the median "
            f"{self.shown(median)} of {count} completed trials at that step"))

    def _completed_at(self, trials: Sequence[TrialRecord], step: int) -> tuple[dict[str, float], list[float]]:
        """The completed trials' scores at `step` (their last report at or before it), by name and sorted."""
        by_name = {}
        for other in trials:
            if other.phase == "Succeeded":
                value = value_at_or_before(self.curve(other), step)
                if value is not None:
                    by_name[other.name] = self.score(value)
        return by_name, sorted(by_name.values())
