"""The stopper interface: one pure decision per running trial.

In the spirit of Optuna's pruners (`prune(study, trial) -> bool`): a stopper looks at one
running trial's intermediate curve and at the other trials' curves and says whether the
trial should stop now, and why. It keeps no state and performs no I/O, so the same reports
always give the same decision; a restarted runner or operator decides exactly as before,
and a decision is never lost or made twice (a stopped trial is Pruned, never asked again).

The engine asks the stoppers about Running trials only, in index order, after every
observation. Settings are checked in the constructor; a wrong one raises SettingsError
naming the key, which the CLI and the operator report at spec.earlyStopping.settings.KEY.
"""

from __future__ import annotations

import abc
import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, TypeVar

from kubetune.api.models import Objective
from kubetune.strategies.base import SettingsError
from kubetune.trials import TrialRecord

T = TypeVar("T")

EARLY_STOPPED = "EarlyStopped"
DIVERGED = "Diverged"


@dataclass(frozen=True)
class Decision:
    """Stop the trial: a CamelCase reason (EarlyStopped, Diverged) and the rule with its numbers."""

    reason: str
    message: str


class Stopper(abc.ABC):
    name: ClassVar[str]
    #: Settings this stopper accepts, with a one-line description each (shown in errors).
    settings_help: ClassVar[Mapping[str, str]] = {}

    def __init__(self, objective: Objective, settings: Mapping[str, Any]) -> None:
        unknown = sorted(set(settings) - set(self.settings_help))
        if unknown:
            allowed = ", ".join(f"{k} ({v})" for k, v in self.settings_help.items()) or "none"
            raise SettingsError(unknown[0], f"unknown setting for early-stopping rule {self.name}; allowed: {allowed}")
        self.objective = objective
        self.settings = dict(settings)
        # Curves by (trial record, metric), so that in one plan each curve is built once rather
        # than once per running trial (a study of 10,000 trials would rebuild them all for every
        # running trial). Records are immutable; the entry keeps its record, so an id is never
        # mistaken for another record's.
        self._curves: dict[tuple[int, str], tuple[TrialRecord, list[tuple[int, float]]]] = {}
        self._memo: dict[tuple, tuple[tuple, Any]] = {}

    @property
    def max_resource(self) -> Optional[int]:
        """The step (for example epoch) a trial needs to finish, when the rule knows it."""
        return None

    @abc.abstractmethod
    def decide(self, trial: TrialRecord, trials: Sequence[TrialRecord]) -> Optional[Decision]:
        """Whether the running `trial` should stop now; `trials` are all the study's trials."""

    # -- helpers for rules over the objective's curve ---------------------------------------

    def curve(self, trial: TrialRecord, metric: Optional[str] = None) -> list[tuple[int, float]]:
        """(step, value) of every report that has `metric` (default: the objective), by step."""
        metric = metric or self.objective.metric
        key = (id(trial), metric)
        cached = self._curves.get(key)
        if cached is None or cached[0] is not trial:
            cached = self._curves[key] = (trial, curve(trial, metric))
        return cached[1]

    def per_round(self, trials: Sequence[TrialRecord], key: tuple, compute: Callable[[], T]) -> T:
        """compute(), a summary of `trials` (for example every trial's value at one rung), once
        per round instead of once per running trial. Only an immutable tuple of trials is
        remembered, as the engine passes; any other sequence is summarised afresh each call."""
        if not isinstance(trials, tuple):
            return compute()
        full = (id(trials), *key)
        cached = self._memo.get(full)
        if cached is None or cached[0] is not trials:
            cached = self._memo[full] = (trials, compute())
        return cached[1]

    def score(self, value: float) -> float:
        """Lower is better whatever the goal."""
        return value if self.objective.goal == "minimize" else -value

    def shown(self, score: float) -> str:
        """A score back in the metric's own terms, for messages."""
        return fmt(score if self.objective.goal == "minimize" else -score)


def curve(trial: TrialRecord, metric: str) -> list[tuple[int, float]]:
    """A trial's finite reports of `metric` as (step, value), by step; the last report of a
    step wins.

    Reports without a step count by position (1, 2, ...), as the trial SDK allows them.
    NaN and infinite values are left out: they are the divergence guard's business, and the
    cluster's trial status cannot hold them, so both bodies rank trials on the same values.
    """
    points: list[tuple[int, float]] = []
    ordered = True
    for position, report in enumerate(trial.history, start=1):
        value = report.metrics.get(metric)
        if value is not None and math.isfinite(value):
            step = report.step if report.step is not None else position
            ordered = ordered and (not points or step > points[-1][0])
            points.append((step, float(value)))
    return points if ordered else sorted(dict(points).items())  # dict(): a step's last report wins


def value_at_or_past(points: Sequence[tuple[int, float]], step: int) -> Optional[float]:
    """The first value reported at or after `step` (where an observer may have missed `step` itself)."""
    return next((v for s, v in points if s >= step), None)


def value_at_or_before(points: Sequence[tuple[int, float]], step: int) -> Optional[float]:
    """The last value reported at or before `step`, if the curve reaches `step` at all."""
    if not points or points[-1][0] < step:
        return None
    before = [v for s, v in points if s <= step]
    return before[-1] if before else None


def median_without(ordered: Sequence[float], value: Optional[float] = None) -> Optional[float]:
    """The median of sorted values after removing one occurrence of `value` (when present),
    without copying: a round's summary serves every running trial, each leaving itself out."""
    removed = None
    if value is not None:
        i = bisect.bisect_left(ordered, value)
        if i < len(ordered) and ordered[i] == value:
            removed = i
    n = len(ordered) - (removed is not None)
    if n == 0:
        return None

    def at(i: int) -> float:
        return ordered[i if removed is None or i < removed else i + 1]

    return at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2


def int_setting(settings: Mapping[str, Any], key: str, default: Optional[int], minimum: int) -> Optional[int]:
    value = settings.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value) or value < minimum:
        raise SettingsError(key, f"must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def number_setting(settings: Mapping[str, Any], key: str, default: float, above: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= above:
        raise SettingsError(key, f"must be a number greater than {above:g}, got {value!r}")
    return float(value)


def fmt(value: float) -> str:
    return f"{value:.4g}"
