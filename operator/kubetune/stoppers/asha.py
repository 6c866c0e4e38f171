"""Asynchronous successive halving (ASHA, Li et al. 2020) and Hyperband (brackets of ASHA).

The resource is the step trials report (epochs for the reference trainer). Rungs sit at
minResource * eta^k below maxResource; minResource defaults to maxResource / eta^3 rounded up
(at least 1): then there are at most three rungs, and every trial gets at least 1/eta^3 of
a complete training. A trial that has reached a rung continues only while fewer than 1/eta of
the trials that reported a value at that rung (itself included) are better than it: the top
ceil(n/eta) of n continue, ties with the last place included. A trial's value at a rung is its
first report at or past the rung's step (an observer may have missed the exact step).

Why ceil(n/eta), not floor(n/eta) as in ASHA's promotion rule (Li et al. 2020, Algorithm 2)
and Optuna's SuccessiveHalvingPruner: ASHA pauses a trial that is not yet in the top floor(n/eta) and may promote it later, when
more trials have reached the rung. A stopping rule cannot resume a trial, so it must decide
when the trial arrives; floor(n/eta) then lets fewer than 1/eta through (1 of 4, 1 of 5 for
eta 3) and cuts slow starters that ASHA would have promoted. ceil(n/eta) is, up to
interpolation, the (1 - 1/eta)-quantile cut-off of the stopping variants of Ray Tune's
ASHAScheduler and Syne Tune's ASHA.

Being stateless, the rule compares a trial at the highest rung it has reached until it
reaches the next one: a trial that passed a rung may still be stopped before the next rung
if enough better trials reach that rung meanwhile. Trials that reached maxResource are never
stopped: they are done.
"""

from __future__ import annotations

import bisect

from typing import Any, Mapping, Optional, Sequence

from kubetune.api.models import Objective
from kubetune.stoppers.base import EARLY_STOPPED, Decision, SettingsError, Stopper, int_setting, value_at_or_past
from kubetune.trials import TrialRecord


class AshaStopper(Stopper):
    name = "asha"
    settings_help = {
        "reductionFactor": "eta: the top 1/eta (rounded up) of the trials at a rung continue, default 3",
        "minResource": "the step of the first rung, default maxResource / reductionFactor^3 rounded up "
                       "(at most three rungs), or 1 without maxResource",
        "maxResource": "the step at which a trial is complete (for example the epochs), "
                       "passed to trials as ${study.maxResource} and KUBETUNE_MAX_RESOURCE",
    }

    def __init__(self, objective: Objective, settings: Mapping[str, Any]) -> None:
        super().__init__(objective, settings)
        self.eta = int_setting(settings, "reductionFactor", 3, 2)
        self._max_resource = int_setting(settings, "maxResource", None, 1)
        self.min_resource = int_setting(settings, "minResource", default_min_resource(self._max_resource, self.eta), 1)
        if self._max_resource is not None and self._max_resource <= self.min_resource:
            raise SettingsError("maxResource", (
                f"must be greater than minResource={self.min_resource}, got {self._max_resource}"))

    @property
    def max_resource(self) -> Optional[int]:
        return self._max_resource

    def decide(self, trial: TrialRecord, trials: Sequence[TrialRecord]) -> Optional[Decision]:
        return self._halve(trial, trials, self.min_resource, "asha rule")

    def _rung(self, step: int, first: int) -> Optional[tuple[int, int]]:
        """(k, rung step) of the highest rung at or below `step`, or None below the first."""
        found = None
        k, rung = 0, first
        while rung <= step and (self._max_resource is None or rung < self._max_resource):
            found = (k, rung)
            k, rung = k + 1, rung * self.eta
        return found

    def _halve(self, trial: TrialRecord, peers: Sequence[TrialRecord], first: int, rule: str) -> Optional[Decision]:
        points = self.curve(trial)
        if not points:
            return None
        step = points[-1][0]
        if self._max_resource is not None and step >= self._max_resource:
            return None
        rung = self._rung(step, first)
        if rung is None:
            return None
        k, rung_step = rung
        mine = self.score(value_at_or_past(points, rung_step))
        by_name, ordered = self.per_round(peers, ("rung", rung_step), lambda: self._at_rung(peers, rung_step))
        own = by_name.get(trial.name)  # the trial itself counts once, with its own curve's value
        better = bisect.bisect_left(ordered, mine) - (own is not None and own < mine)
        size = len(ordered) - (own is not None) + 1
        rank = 1 + better  # ties share the better rank
        keep = -(-size // self.eta)  # ceil(n/eta): fewer than n/eta trials are better
        if rank <= keep:
            return None
        at_rung = sorted([mine] + [score for name, score in by_name.items() if name != trial.name])
        metric = self.objective.metric
        return Decision(EARLY_STOPPED, (
            f"{rule} at rung {k} (step {rung_step}): {metric} {self.shown(mine)} ranks {rank} of "
            f"{size} trials at that rung; only the top {keep} (1/{self.eta}, rounded up) continue, "
            f"the cut-off is {self.shown(at_rung[keep - 1])}"))

    def _at_rung(self, peers: Sequence[TrialRecord], rung_step: int) -> tuple[dict[str, float], list[float]]:
        """Every peer's score at the rung (its first report at or past it), by name and sorted."""
        by_name = {}
        for other in peers:
            value = value_at_or_past(self.curve(other), rung_step)
            if value is not None:
                by_name[other.name] = self.score(value)
        return by_name, sorted(by_name.values())


class HyperbandStopper(AshaStopper):
    """Hyperband as brackets of ASHA (Li et al. 2018; 2020, section 3.3).

    Bracket b has its first rung at minResource * eta^b: bracket 0 is the most aggressive,
    the last bracket runs every trial to maxResource. Trials are dealt to brackets by index,
    in a fixed interleaved cycle where bracket b's share follows Hyperband's trial counts
    n_b = ceil((B+1)/(B-b+1) * eta^(B-b)), so each bracket spends about the same budget.
    Within a bracket, trials compete only with trials of the same bracket.
    """

    name = "hyperband"
    settings_help = {**AshaStopper.settings_help, "maxResource": (
        "required: the step at which a trial is complete (for example the epochs), "
        "passed to trials as ${study.maxResource} and KUBETUNE_MAX_RESOURCE")}

    def __init__(self, objective: Objective, settings: Mapping[str, Any]) -> None:
        super().__init__(objective, settings)
        if self._max_resource is None:
            raise SettingsError("maxResource", "hyperband needs maxResource (the steps a complete trial runs, for example its epochs)")
        top = 0
        while self.min_resource * self.eta ** (top + 1) <= self._max_resource:
            top += 1
        shares = [-(-(top + 1) * self.eta ** (top - b) // (top - b + 1)) for b in range(top + 1)]
        self.cycle = _interleave(shares)

    def bracket(self, index: int) -> int:
        return self.cycle[index % len(self.cycle)]

    def decide(self, trial: TrialRecord, trials: Sequence[TrialRecord]) -> Optional[Decision]:
        bracket = self.bracket(trial.index)
        peers = self.per_round(trials, ("bracket", bracket),
                               lambda: tuple(t for t in trials if self.bracket(t.index) == bracket))
        return self._halve(trial, peers, self.min_resource * self.eta ** bracket, f"hyperband rule (bracket {bracket})")


def default_min_resource(max_resource: Optional[int], eta: int) -> int:
    """ceil(maxResource / eta^3), at least 1: at most three rungs below maxResource, as in the
    1-3-9-27 schedule of Hyperband's most aggressive bracket. A first rung at 1 of 1,000 steps
    would rank trials on noise; without maxResource the first rung is step 1."""
    if max_resource is None:
        return 1
    return max(1, -(-max_resource // eta ** 3))


def _interleave(shares: Sequence[int]) -> list[int]:
    """One cycle with `shares[b]` entries of b, spread evenly (smooth weighted round-robin)."""
    total = sum(shares)
    current = [0] * len(shares)
    cycle = []
    for _ in range(total):
        for b, share in enumerate(shares):
            current[b] += share
        chosen = max(range(len(shares)), key=lambda b: (current[b], -b))
        current[chosen] -= total
        cycle.append(chosen)
    return cycle
