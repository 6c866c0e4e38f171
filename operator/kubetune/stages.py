"""Staged tuning: parameter groups tuned in order, one change at a time.

A study without stages is one stage holding every parameter, so the engine has one code path.
Stage k searches its own parameters while the parameters of stages before it stay at those
stages' results (their best trial's values, or the range test's pick) and every other
parameter at its default. A stage is over when its budget is used (or its strategy has
nothing left) and none of its trials is running; only then does the next one start, so its
fixed values are final, and once a later stage has trials it never reopens.

Budgets: a stage with maxTrials (a range test: one) gets that; the others share what is left
of spec.budget.maxTrials evenly, the earlier ones taking the remainder. The share is worked
out when a stage starts, from what the finished stages actually used: trials a stage did not
need (a grid that ran out) go to the stages after it, and raising maxTrials on a finished
study gives the extra trials to its last stage.

Everything here is computed from the spec and the trials, so a restarted runner or operator
resumes in the same stage with the same fixed values.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from kubetune import lr_range, scaling, space
from kubetune.api.models import (
    MAX_CURVE_POINTS,
    ROLE_PRIORITY,
    Budget,
    CurvePoint,
    HyperparameterStudy,
    LrRangeTestStatus,
    Parameter,
    Strategy as StrategySpec,
)
from kubetune.strategies import STRATEGIES, SettingsError, Strategy, study_seed
from kubetune.strategies.lr_range_test import LrRangeTestStrategy, lr_parameter
from kubetune.trials import TrialRecord

RANGE_TEST = LrRangeTestStrategy.name
STAGE_NAMES = {"learningRate": "learning-rate", "batchSize": "batch-size", "regularization": "regularization",
               "architecture": "architecture", "other": "other"}


class StageError(ValueError):
    """The stages cannot be built from the spec; `path` names the field to fix."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Stage:
    """One stage as the engine runs it. `name` is None for a study without stages."""

    name: Optional[str]
    position: int
    parameters: tuple[Parameter, ...]
    strategy: StrategySpec
    max_trials: Optional[int]  # None: a share of what is left (see `budget`)
    path: str  # where in the spec this stage comes from, for error messages

    @property
    def is_range_test(self) -> bool:
        return self.strategy.name == RANGE_TEST

    def owns(self, trial: TrialRecord) -> bool:
        return trial.stage == self.name


def stages(study: HyperparameterStudy) -> list[Stage]:
    """The study's stages in order: spec.stages, the preset's, or one stage of everything."""
    spec = study.spec
    if spec.stages is None and spec.stage_preset is None:
        return [Stage(None, 0, tuple(spec.parameters), spec.strategy, None, "spec")]
    # (name, parameter names, the stage's own strategy or None for spec.strategy, maxTrials, path)
    groups: list[tuple[str, list[str], Optional[StrategySpec], Optional[int], str]] = []
    if spec.stages is not None:
        seen: dict[str, str] = {}
        names: set[str] = set()
        known = {p.name for p in spec.parameters}
        for i, stage in enumerate(spec.stages):
            path = f"spec.stages[{i}]"
            if stage.name in names:
                raise StageError(f"{path}.name", f"stage name {stage.name!r} appears twice")
            names.add(stage.name)
            for name in stage.parameters:
                if name not in known:
                    raise StageError(f"{path}.parameters", f"{name!r} is not a parameter; parameters: {', '.join(sorted(known))}")
                if name in seen:
                    raise StageError(f"{path}.parameters", f"{name!r} is already tuned by stage {seen[name]!r}; tune each parameter in one stage")
                seen[name] = stage.name
            groups.append((stage.name, list(stage.parameters), stage.strategy, stage.max_trials, path))
    else:
        preset = spec.stage_preset
        by_role: dict[str, list[str]] = {role: [] for role in ROLE_PRIORITY}
        for p in spec.parameters:
            by_role[p.effective_role].append(p.name)
        if preset.lr_range_test is not None:
            settings = dict(preset.lr_range_test)
            try:
                lr = lr_parameter(spec.parameters, settings.get("lrParameter"))
            except SettingsError as exc:
                raise StageError(f"spec.stagePreset.lrRangeTest.{exc.key}", str(exc)) from None
            settings["lrParameter"] = lr
            groups.append(("lr-range-test", [lr], StrategySpec(name=RANGE_TEST, settings=settings), 1,
                           "spec.stagePreset.lrRangeTest"))
            by_role = {role: [n for n in group if n != lr] for role, group in by_role.items()}
        for role in ROLE_PRIORITY:
            if by_role[role]:
                groups.append((STAGE_NAMES[role], by_role[role], None, None, "spec.stagePreset"))
    seed = study_seed(study)
    result = []
    for position, (name, names, own, max_trials, path) in enumerate(groups):
        # Each stage draws its own sequence: unless its own strategy sets a seed, the seed is
        # derived from the study's and the stage's name.
        strategy = own or spec.strategy
        if own is None or own.seed is None:
            strategy = strategy.model_copy(update={"seed": (seed + zlib.crc32(name.encode())) & 0x7FFFFFFF})
        if strategy.name == RANGE_TEST:
            if max_trials not in (None, 1):
                raise StageError(f"{path}.maxTrials", "a learning-rate range test runs exactly one trial; leave maxTrials out")
            max_trials = 1
        result.append(Stage(name, position, tuple(spec.parameter(n) for n in names), strategy, max_trials, path))
    _check_budget(study, result)
    return result


def _check_budget(study: HyperparameterStudy, all_stages: Sequence[Stage]) -> None:
    total = study.spec.budget.max_trials
    given = sum(s.max_trials for s in all_stages if s.max_trials is not None)
    shared = sum(s.max_trials is None for s in all_stages)
    if total < given + shared:
        raise StageError("spec.budget.maxTrials", (
            f"the stages need at least {given + shared} trials ({given} set by stages, at least one for each of "
            f"the {shared} stages without maxTrials) but maxTrials is {total}; raise it"))


def budget(study: HyperparameterStudy, all_stages: Sequence[Stage], position: int, spent: int) -> int:
    """Stage `position`'s trial budget, once the stages before it have used `spent` trials."""
    stage = all_stages[position]
    if stage.max_trials is not None:
        return stage.max_trials
    rest = all_stages[position:]
    shared = sum(s.max_trials is None for s in rest)
    left = max(0, study.spec.budget.max_trials - spent - sum(s.max_trials or 0 for s in rest))
    return -(-left // shared)  # the earlier stages take the remainder


def make_strategy(study: HyperparameterStudy, stage: Stage, max_trials: Optional[int] = None) -> Strategy:
    """The stage's strategy; `max_trials` is its budget (which auto's choice depends on)."""
    cls = STRATEGIES[stage.strategy.name]
    limits = Budget(max_trials=max_trials or stage.max_trials or study.spec.budget.max_trials,
                    parallel_trials=study.spec.budget.parallel_trials,
                    max_failed_trials=study.spec.budget.max_failed_trials)
    seed = stage.strategy.seed if stage.name is not None else study_seed(study)
    return cls(stage.parameters, study.spec.objective, seed, stage.strategy.settings, limits)


def defaults(study: HyperparameterStudy) -> dict[str, Any]:
    return {p.name: space.default_value(p) for p in study.spec.parameters}


@dataclass
class Outcome:
    """What a finished stage settled on, for the stages after it."""

    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    range_test: Optional[LrRangeTestStatus] = None


def range_test_outcome(study: HyperparameterStudy, stage: Stage, trial: TrialRecord,
                       fallback: dict[str, Any]) -> Outcome:
    """The learning rate a finished range-test trial points to, under the stage's rule."""
    strategy = make_strategy(study, stage)
    name = strategy.lr_parameter
    curve = lr_range.curve_from_history(trial.history)
    status = LrRangeTestStatus(trial=trial.name, parameter=name, rule=strategy.rule, curve=_thin(curve))
    keep = {name: fallback[name]}
    if trial.phase != "Succeeded":
        status.message = (f"the range-test trial {trial.name} ended {trial.phase} ({trial.reason or 'no reason'}); "
                          f"{name} stays at its default {space.format_value(fallback[name])}")
        return Outcome(keep, status.message, range_test=status)
    try:
        choice = lr_range.choose(curve, strategy.rule)
    except ValueError as exc:
        status.message = f"{exc}; {name} stays at its default {space.format_value(fallback[name])}"
        return Outcome(keep, status.message, range_test=status)
    # The trial ran at its batch size: undo the scaling to get the parameter's raw value.
    factor = scaling.lr_factor(study, trial.parameters)
    raw = choice.learning_rate / factor
    parameter = study.spec.parameter(name)
    clipped = min(max(raw, parameter.min), parameter.max)
    value = float(f"{clipped:.6g}")
    message = choice.message
    if factor != 1.0:
        message += f"; {value:.3g} at the base batch size (spec.lrScaling)"
    if clipped != raw:
        message += f"; clipped to the parameter's range [{parameter.min:g}, {parameter.max:g}]"
    status.learning_rate = value
    status.message = message
    return Outcome({name: value}, message, range_test=status)


def _thin(curve: Sequence[tuple[float, float]]) -> list[CurvePoint]:
    """At most MAX_CURVE_POINTS points, evenly spaced, the first and the last always kept."""
    points = list(curve)
    if len(points) > MAX_CURVE_POINTS:
        last = len(points) - 1
        picks = sorted({round(i * last / (MAX_CURVE_POINTS - 1)) for i in range(MAX_CURVE_POINTS)})
        points = [points[i] for i in picks]
    return [CurvePoint(lr=lr, loss=loss) for lr, loss in points]
