"""The study engine: a pure function from (study, observed trials, now) to actions and status.

Both bodies call `plan` in a loop: the local runner after every observed change, the
operator on every reconcile. It performs no I/O and keeps no state between calls, so the
same inputs always give the same plan; everything it needs to continue after a restart is
in the trials themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Optional, Sequence, Union

from kubetune import scaling, stages
from kubetune.api.models import (
    BestTrial,
    Condition,
    HyperparameterStudy,
    LrRangeTestRun,
    LrRangeTestStatus,
    Objective,
    StageStatus,
    StrategyStatus,
    StudyPhase,
    StudyStatus,
    TrialCounts,
    TrialSpec,
)
from kubetune.stoppers import Stopper, decide, make_stoppers
from kubetune.strategies import Strategy
from kubetune.trials import TrialRecord, trial_name


@dataclass(frozen=True)
class CreateTrial:
    name: str
    index: int
    parameters: dict
    rerun_of: Optional[str] = None
    stage: Optional[str] = None
    #: The values the trial runs with where spec.lrScaling changes them.
    effective_parameters: Optional[dict] = None
    #: Set for a learning-rate range-test trial.
    lr_range_test: Optional[LrRangeTestRun] = None

    def spec(self, study: HyperparameterStudy) -> TrialSpec:
        """The HyperparameterTrial spec both bodies write for this trial."""
        return TrialSpec(study=study.metadata.name, index=self.index, parameters=dict(self.parameters),
                         rerun_of=self.rerun_of, stage=self.stage, effective_parameters=self.effective_parameters,
                         lr_range_test=self.lr_range_test)

    def record(self) -> TrialRecord:
        return TrialRecord(self.name, self.index, self.parameters, rerun_of=self.rerun_of, stage=self.stage,
                           range_test=self.lr_range_test is not None)


@dataclass(frozen=True)
class StopTrial:
    """Stop a running trial. `phase` is what it becomes: Pruned (early stopping) or Stopped."""

    name: str
    phase: Literal["Pruned", "Stopped"]
    reason: str
    message: str


Action = Union[CreateTrial, StopTrial]


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: StudyStatus

    @property
    def finished(self) -> bool:
        """The study is over and nothing is left to do: the runner may exit."""
        return self.status.phase in ("Succeeded", "Failed") and not self.actions

    def creates(self) -> list[CreateTrial]:
        return [a for a in self.actions if isinstance(a, CreateTrial)]

    def stops(self) -> list[StopTrial]:
        return [a for a in self.actions if isinstance(a, StopTrial)]


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def is_better(value: float, than: float, objective: Objective) -> bool:
    return value < than if objective.goal == "minimize" else value > than


def best_trial(study: HyperparameterStudy, trials: Sequence[TrialRecord]) -> Optional[TrialRecord]:
    """The succeeded trial with the best finite objective; ties go to the earlier trial.
    Range-test trials never count: their loss was measured at a moving learning rate."""
    objective = study.spec.objective
    best: Optional[TrialRecord] = None
    for trial in sorted(trials, key=lambda t: t.index):
        value = None if trial.range_test else trial.objective(objective)
        if value is not None and (best is None or is_better(value, best.objective(objective), objective)):
            best = trial
    return best


def count(trials: Sequence[TrialRecord]) -> TrialCounts:
    phases = Counter(trial.phase for trial in trials)
    return TrialCounts(total=len(trials), **{phase.lower(): n for phase, n in phases.items()})


def target_reached(study: HyperparameterStudy, best: Optional[TrialRecord]) -> bool:
    objective = study.spec.objective
    if objective.target is None or best is None:
        return False
    value = best.objective(objective)
    return value <= objective.target if objective.goal == "minimize" else value >= objective.target


def plan(
    study: HyperparameterStudy,
    trials: Sequence[TrialRecord],
    now: datetime,
    previous: Optional[StudyStatus] = None,
) -> Plan:
    """Decide what to do next. `previous` is the last status, used to keep condition times."""
    spec = study.spec
    budget = spec.budget
    previous = previous or study.status or StudyStatus()
    counts = count(trials)
    best = best_trial(study, trials)
    active = [t for t in trials if t.active]
    # Trials stopped by a suspension or by the study ending gave no result: they do not use budget.
    used = counts.total - counts.stopped
    all_stages = stages.stages(study)

    actions: list[Action] = []
    phase: StudyPhase
    if target_reached(study, best):
        phase, reason = "Succeeded", "TargetReached"
        message = (
            f"trial {best.name} reached {spec.objective.metric}={_fmt(best.objective(spec.objective))} "
            f"(target {_fmt(spec.objective.target)})"
        )
    elif counts.failed > budget.max_failed_trials:
        phase, reason = "Failed", "TooManyFailedTrials"
        message = (
            f"{counts.failed} trials failed, more than maxFailedTrials={budget.max_failed_trials}; "
            f"see the failed trials' reasons"
        )
    elif spec.suspend:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend is true; no trials run"
    else:
        phase, reason, message = "Running", "TrialsRunning", ""

    if phase == "Running":
        # Pruned trials used their budget; their slots are free for new trials at once.
        stops = _prune(make_stoppers(study), trials)
        actions.extend(stops)
        stopped = {stop.name: stop for stop in stops}
        records = [replace(t, phase=stopped[t.name].phase) if t.name in stopped else t for t in trials]
        running = len(active) - len(stops)
        progress = _advance(study, all_stages, records, max(0, budget.parallel_trials - running), best)
        actions.extend(progress.created)
        running_after = running + len(progress.created)
        if running_after == 0:
            phase, reason, message = _ended(study, all_stages, progress, best, used)
        else:
            message = f"{running_after} trials running, {used + len(progress.created)} of {budget.max_trials} started"
            if progress.current is not None and progress.current.name is not None:
                message += f"; stage {progress.current.name}"
    else:
        progress = _advance(study, all_stages, trials, 0, best)
        stop_reason = {"Succeeded": "StudySucceeded", "Failed": "StudyFailed", "Suspended": "StudySuspended"}[phase]
        for trial in sorted(active, key=lambda t: t.index):
            actions.append(StopTrial(trial.name, "Stopped", stop_reason, message))

    strategy = progress.strategy
    status = StudyStatus(
        phase=phase,
        trials=counts,
        best_trial=_best_status(study, best),
        strategy=StrategyStatus(name=strategy.name, seed=strategy.seed, chosen=strategy.chosen, reason=strategy.reason),
        stages=progress.stages if spec.stages is not None or spec.stage_preset is not None else [],
        lr_range_test=progress.range_test,
        observed_generation=study.metadata.generation,
        start_time=previous.start_time or (timestamp(now) if (trials or actions) else None),
        completion_time=(previous.completion_time or timestamp(now)) if phase in ("Succeeded", "Failed") else None,
    )
    status.conditions = _conditions(previous, phase, reason, message, study.metadata.generation, now)
    return Plan(tuple(actions), status)


def _ended(study: HyperparameterStudy, all_stages: Sequence[stages.Stage], progress: "Progress",
           best: Optional[TrialRecord], used: int) -> tuple[StudyPhase, str, str]:
    """Phase, reason and message of a study with every stage over and nothing running."""
    spec = study.spec
    objective = spec.objective
    if best is None and progress.range_test is not None and not progress.searched:
        # Only a range test ran: its pick is the result.
        if progress.range_test.learning_rate is None:
            return "Failed", "NoLearningRate", f"the range test picked no learning rate: {progress.range_test.message}"
        return "Succeeded", "LearningRateFound", (
            f"{progress.range_test.parameter}={_fmt(progress.range_test.learning_rate)} by the "
            f"{progress.range_test.rule} rule ({progress.range_test.trial})")
    if len(all_stages) > 1:
        phase, reason, message = "Succeeded", "StagesCompleted", f"ran {len(all_stages)} stages, {used} trials"
    elif progress.exhausted and used < spec.budget.max_trials:
        phase, reason = "Succeeded", "SearchSpaceExhausted"
        message = f"the {progress.strategy.name} strategy has no configurations left to try"
    else:
        phase, reason, message = "Succeeded", "MaxTrialsReached", f"ran maxTrials={spec.budget.max_trials} trials"
    if best is None:
        return "Failed", "NoSuccessfulTrials", message + "; no trial succeeded with a finite objective"
    return phase, reason, message + f"; best {objective.metric}={_fmt(best.objective(objective))} ({best.name})"


def _prune(stoppers: Sequence[Stopper], trials: Sequence[TrialRecord]) -> list[StopTrial]:
    """Stop the running trials the stoppers give up on, in index order.

    Range-test trials are neither stopped nor compared with: their loss rises on purpose."""
    # A tuple: stoppers summarise it once per plan, not once per running trial.
    peers = tuple(t for t in trials if not t.range_test)
    stops = []
    for trial in sorted(peers, key=lambda t: t.index):
        if trial.phase == "Running":
            decision = decide(stoppers, trial, peers)
            if decision is not None:
                stops.append(StopTrial(trial.name, "Pruned", decision.reason, decision.message))
    return stops


@dataclass
class Progress:
    created: list[CreateTrial]
    stages: list[StageStatus]
    strategy: Optional[Strategy]  # the running stage's (or the last stage's) strategy
    current: Optional[stages.Stage] = None  # the stage still running, None when all are over
    exhausted: bool = False  # the last stage's strategy had nothing left to suggest
    range_test: Optional[LrRangeTestStatus] = None
    searched: bool = False  # a stage other than a range test has run trials


def _advance(study: HyperparameterStudy, all_stages: Sequence[stages.Stage], trials: Sequence[TrialRecord],
             room: int, overall_best: Optional[TrialRecord]) -> Progress:
    """Walk the stages in order: finished ones fix their results, the first unfinished one gets
    up to `room` new trials, and the ones after it wait. `overall_best` is the study's best
    trial (a study without stages is one stage: its best)."""
    fixed = stages.defaults(study)
    order = list(fixed)
    progress = Progress([], [], None)
    next_index = max((t.index for t in trials), default=-1) + 1
    started = {t.stage for t in trials}
    spent = 0
    earlier: list[TrialRecord] = []  # the trials of the stages already over
    for position, stage in enumerate(all_stages):
        names = [p.name for p in stage.parameters]
        limit = stages.budget(study, all_stages, position, spent)
        strategy = stages.make_strategy(study, stage, limit)
        status = StageStatus(name=stage.name or "", parameters=sorted(names, key=order.index),
                             strategy=strategy.chosen or strategy.name, phase="Pending", max_trials=limit,
                             fixed={k: v for k, v in fixed.items() if k not in names})
        progress.stages.append(status)
        if progress.current is not None:
            continue
        progress.strategy = strategy
        mine = [t for t in trials if stage.owns(t)]
        used = sum(t.phase != "Stopped" for t in mine)
        # Once a later stage has trials, this one is over for good (its results are in use).
        later = any(s.name in started for s in all_stages[position + 1:])
        room_here = 0 if later else min(room - len(progress.created), limit - used)
        created, exhausted = _new_trials(study, stage, strategy, mine, room_here, status.fixed, next_index)
        progress.created.extend(created)
        next_index += len(created)
        mine += [c.record() for c in created]
        used += len(created)
        rerun = {t.rerun_of for t in mine}
        unfinished = any(t.active or (t.phase == "Stopped" and t.name not in rerun) for t in mine)
        progress.exhausted = exhausted
        status.trials = used
        progress.searched = progress.searched or (bool(mine) and not stage.is_range_test)
        best = overall_best if stage.name is None else best_trial(study, mine)
        if best is not None:
            status.best_trial, status.best_objective = best.name, best.objective(study.spec.objective)
        if unfinished or (not later and used < limit and not exhausted):
            status.phase = "Running"
            progress.current = stage
            continue
        status.phase = "Succeeded"
        spent += used
        if stage.is_range_test and mine:
            outcome = stages.range_test_outcome(study, stage, mine[-1], fixed)
            progress.range_test = outcome.range_test
            result, status.message = outcome.result, outcome.message
        else:
            result, status.message = _stage_result(study, names, status.fixed, fixed, mine, earlier, best)
        status.result = result
        fixed.update(result)
        earlier += mine
    return progress


def _stage_result(study: HyperparameterStudy, names: Sequence[str], held: dict[str, Any], in_use: dict[str, Any],
                  mine: Sequence[TrialRecord], earlier: Sequence[TrialRecord],
                  best: Optional[TrialRecord]) -> tuple[dict[str, Any], str]:
    """The values a finished stage passes on, and why.

    One change at a time: the stage's values replace those in use only when its best trial
    beats every earlier trial that ran with the values in use (the incumbent, which the
    stage's own parameters had at their current values). Otherwise they stay as they are."""
    incumbent = best_trial(study, [t for t in earlier if all(t.parameters.get(k) == v for k, v in held.items())])
    if best is not None and (incumbent is None or best_trial(study, [incumbent, best]) is best):
        used = sum(t.phase != "Stopped" for t in mine)
        return {k: best.parameters[k] for k in names}, f"best of {used} trials: {best.name}"
    kept = {k: in_use[k] for k in names}
    if incumbent is not None:
        return kept, f"no trial of this stage beat {incumbent.name}, which ran with the values in use; they stay"
    return kept, "no trial succeeded; the parameters stay at their defaults"


def _new_trials(
    study: HyperparameterStudy, stage: stages.Stage, strategy: Strategy, trials: Sequence[TrialRecord],
    room: int, fixed: dict[str, Any], next_index: int,
) -> tuple[list[CreateTrial], bool]:
    """Up to `room` new trials of one stage: first re-runs of its trials stopped unfinished,
    then suggestions. Also says whether the strategy has nothing left to suggest.

    Strategies number their suggestions from 0 without gaps (re-runs are not suggestions),
    so a grid resumes at the right point and random search draws the same sequence as an
    uninterrupted study would. A stage's strategy sees only its own trials and parameters.
    """
    created: list[CreateTrial] = []
    run = getattr(strategy, "run_config", None)  # the range test's
    rerun = {t.rerun_of for t in trials if t.rerun_of is not None}
    for trial in sorted(trials, key=lambda t: t.index):
        if len(created) >= room:
            break
        if trial.phase == "Stopped" and trial.name not in rerun:
            created.append(_create(study, stage, next_index + len(created), dict(trial.parameters), run, trial.name))
    names = [p.name for p in stage.parameters]
    history = [t if stage.name is None else replace(t, parameters={k: t.parameters[k] for k in names if k in t.parameters})
               for t in list(trials) + [c.record() for c in created]]
    sequence = sum(1 for t in history if t.rerun_of is None)
    size = strategy.size()
    exhausted = size is not None and sequence >= size
    while len(created) < room and not exhausted:
        suggestion = strategy.suggest(sequence, history)
        if suggestion is None:
            exhausted = True
            break
        action = _create(study, stage, next_index + len(created), {**fixed, **suggestion}, run)
        created.append(action)
        history.append(replace(action.record(), parameters=suggestion))
        sequence += 1
        exhausted = size is not None and sequence >= size
    return created, exhausted


def _create(study: HyperparameterStudy, stage: stages.Stage, index: int, parameters: dict[str, Any],
            run: Optional[LrRangeTestRun], rerun_of: Optional[str] = None) -> CreateTrial:
    ordered = {p.name: parameters[p.name] for p in study.spec.parameters if p.name in parameters}
    return CreateTrial(trial_name(study.metadata.name, index), index, ordered, rerun_of=rerun_of, stage=stage.name,
                       effective_parameters=scaling.effective_parameters(study, ordered), lr_range_test=run)


def _best_status(study: HyperparameterStudy, best: Optional[TrialRecord]) -> Optional[BestTrial]:
    if best is None:
        return None
    return BestTrial(
        name=best.name,
        parameters=dict(best.parameters),
        effective_parameters=scaling.effective_parameters(study, best.parameters),
        objective=best.objective(study.spec.objective),
        metrics={k: v for k, v in best.metrics.items() if math.isfinite(v)},
    )


def _fmt(value: float) -> str:
    return f"{value:.6g}"


CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended")


def _conditions(
    previous: StudyStatus, phase: StudyPhase, reason: str, message: str, generation: Optional[int], now: datetime
) -> list[Condition]:
    ready = phase != "Failed"
    wanted = {
        "Ready": (ready, "StudyValid" if ready else reason, "" if ready else message),
        "Running": (phase == "Running", reason, message if phase == "Running" else ""),
        "Succeeded": (phase == "Succeeded", reason if phase == "Succeeded" else "NotSucceeded", message if phase == "Succeeded" else ""),
        "Failed": (phase == "Failed", reason if phase == "Failed" else "NotFailed", message if phase == "Failed" else ""),
        "Suspended": (phase == "Suspended", "Suspended" if phase == "Suspended" else "NotSuspended", message if phase == "Suspended" else ""),
    }
    return [
        set_condition(previous.conditions, type_, status, cond_reason, cond_message, generation, now)
        for type_, (status, cond_reason, cond_message) in wanted.items()
    ]


def set_condition(
    previous: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: Optional[int],
    now: datetime,
) -> Condition:
    """A condition whose lastTransitionTime changes only when its status does."""
    text = "True" if status else "False"
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == text else timestamp(now)
    return Condition(
        type=type_, status=text, reason=reason, message=message,
        observed_generation=generation, last_transition_time=since,
    )


def invalid_status(
    previous: Optional[StudyStatus], message: str, generation: Optional[int], now: datetime
) -> StudyStatus:
    """Status for a study whose spec cannot be run: Ready=False, reason InvalidSpec."""
    previous = previous or StudyStatus()
    status = previous.model_copy(deep=True)
    status.phase = "Failed" if previous.phase in ("Pending", "Failed") else previous.phase
    conditions = [c for c in previous.conditions if c.type != "Ready"]
    conditions.insert(0, set_condition(previous.conditions, "Ready", False, "InvalidSpec", message, generation, now))
    status.conditions = conditions
    return status
