"""The divergence guard: a trial has diverged, and stops at once with reason Diverged, when

- a metric it reports is NaN or infinite;
- a loss grows past `factor` times its own first value; or
- its first value of a loss, reported at the earliest step of the study, is already more than
  `peerFactor` times the median of what at least `minPeers` other trials reported at that
  step (a run that blew up in its first epoch has no sane value of its own to compare with).

The peer multiple is large on purpose. On the reference trainer (digits, 20 studies of 30
random configurations) the median first-epoch train_loss is about 2.3, cross-entropy at
chance. Against the median of the trials before them, runs that blew up in their first epoch
started at 123x and more (train_loss); the others at 60x at most, among them an Adam run with
a large learning rate that started at 41x (train_loss 73) and 46x (val_loss 40) after a spike
and still ended at 95% accuracy. 100x catches the first and spares the second; 10x would not.

On by default and composed with any rule (spec.earlyStopping.divergence). It looks at every
report, not just the latest, and at the other trials' reports at the same step, so a
restarted runner or operator reaches the same verdict.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from kubetune.stoppers.base import DIVERGED, Decision, Stopper, fmt, int_setting, median_without, number_setting
from kubetune.trials import TrialRecord

DEFAULT_FACTOR = 10.0
DEFAULT_PEER_FACTOR = 100.0
DEFAULT_MIN_PEERS = 5


class DivergenceGuard(Stopper):
    name = "divergence"
    settings_help = {
        "factor": f"a loss above this multiple of its first reported value has diverged, default {DEFAULT_FACTOR:g}",
        "peerFactor": ("a loss whose first report, at the study's earliest step, is above this multiple of "
                       f"the median of the other trials' reports there has diverged, default {DEFAULT_PEER_FACTOR:g}"),
        "minPeers": f"other trials needed at that step before peerFactor applies, default {DEFAULT_MIN_PEERS}",
    }

    def __init__(self, objective, settings) -> None:
        super().__init__(objective, settings)
        self.factor = number_setting(settings, "factor", DEFAULT_FACTOR, 1.0)
        self.peer_factor = number_setting(settings, "peerFactor", DEFAULT_PEER_FACTOR, 1.0)
        self.min_peers = int_setting(settings, "minPeers", DEFAULT_MIN_PEERS, 1)

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
                    decision = self._against_peers(trial, trials, metric, report.step, value)
                    if decision is not None:
                        return decision
                    continue
                first_step, first_value = first[metric]
                if first_value > 0 and value > self.factor * first_value:
                    return Decision(DIVERGED, (
                        f"divergence guard at step {report.step}: {metric} {fmt(value)} is more than "
                        f"{self.factor:g}x its first value {fmt(first_value)} (step {first_step})"))
        return None

    def _against_peers(self, trial: TrialRecord, trials: Sequence[TrialRecord], metric: str,
                       step: Optional[int], value: float) -> Optional[Decision]:
        """A first value far above the median of the other trials' values at the same step.

        Only at the earliest step any trial reported: there every trial has barely started and
        losses are alike. Later, fast and slow learners are orders of magnitude apart (0.006
        and 1.4 at epoch 22 on the reference trainer), and an observer may first see a trial
        that late (a 0.5 s scrape misses the first epochs of a fast trainer).
        """
        if step is None:
            return None
        earliest, by_name, ordered = self.per_round(trials, ("first reports", metric, step),
                                                    lambda: self._reports_at(trials, metric, step))
        if any(first < step for first, name in earliest if name != trial.name):
            return None
        own = by_name.get(trial.name)
        count = len(ordered) - (own is not None)
        if count < self.min_peers:
            return None
        median = median_without(ordered, own)
        if median <= 0 or value <= self.peer_factor * median:
            return None
        return Decision(DIVERGED, (
            f"divergence guard at step {step}: {metric} {fmt(value)}, its first report, is more than "
            f"{self.peer_factor:g}x the median {fmt(median)} of {count} other trials at that step"))

    def _reports_at(self, trials: Sequence[TrialRecord], metric: str, step: int):
        """The two earliest first steps of `metric` with their trials, and every trial's value
        at `step`, by name and sorted."""
        firsts, by_name = [], {}
        for other in trials:
            points = self.curve(other, metric)
            if points:
                firsts.append((points[0][0], other.name))
            value = next((v for s, v in points if s == step), None)
            if value is not None:
                by_name[other.name] = value
        return sorted(firsts)[:2], by_name, sorted(by_name.values())
