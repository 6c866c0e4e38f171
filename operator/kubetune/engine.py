"""The study engine: a pure function from (study, observed trials, now) to actions and status.

Both bodies call `plan` in a loop: the local runner after every observed change, the
operator on every reconcile. It performs no I/O and keeps no state between calls, so the
same inputs always give the same plan; everything it needs to continue after a restart is
in the trials themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Optional, Sequence, Union

from kubetune.api.models import (
    BestTrial,
    Condition,
    HyperparameterStudy,
    Objective,
    StrategyStatus,
    StudyPhase,
    StudyStatus,
    TrialCounts,
)
from kubetune.stoppers import Stopper, decide, make_stoppers
from kubetune.strategies import Strategy, make_strategy, study_seed
from kubetune.trials import TrialRecord, trial_name


@dataclass(frozen=True)
class CreateTrial:
    name: str
    index: int
    parameters: dict
    rerun_of: Optional[str] = None


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
    """The succeeded trial with the best finite objective; ties go to the earlier trial."""
    objective = study.spec.objective
    best: Optional[TrialRecord] = None
    for trial in sorted(trials, key=lambda t: t.index):
        value = trial.objective(objective)
        if value is not None and (best is None or is_better(value, best.objective(objective), objective)):
            best = trial
    return best


def count(trials: Sequence[TrialRecord]) -> TrialCounts:
    counts = TrialCounts(total=len(trials))
    for trial in trials:
        field = trial.phase.lower()
        setattr(counts, field, getattr(counts, field) + 1)
    return counts


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
    strategy = make_strategy(study)

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
        actions.extend(_prune(make_stoppers(study), trials))
        running = len(active) - len(actions)
        room = max(0, min(budget.parallel_trials - running, budget.max_trials - used))
        created, exhausted = _new_trials(study, trials, strategy, room)
        actions.extend(created)
        running_after = running + len(created)
        if running_after == 0:
            if exhausted and used < budget.max_trials:
                phase, reason = "Succeeded", "SearchSpaceExhausted"
                message = f"the {strategy.name} strategy has no configurations left to try"
            else:
                phase, reason = "Succeeded", "MaxTrialsReached"
                message = f"ran maxTrials={budget.max_trials} trials"
            if best is None:
                phase, reason = "Failed", "NoSuccessfulTrials"
                message += "; no trial succeeded with a finite objective"
            else:
                message += f"; best {spec.objective.metric}={_fmt(best.objective(spec.objective))} ({best.name})"
        else:
            message = f"{running_after} trials running, {used + len(created)} of {budget.max_trials} started"
    else:
        stop_reason = {"Succeeded": "StudySucceeded", "Failed": "StudyFailed", "Suspended": "StudySuspended"}[phase]
        for trial in sorted(active, key=lambda t: t.index):
            actions.append(StopTrial(trial.name, "Stopped", stop_reason, message))

    status = StudyStatus(
        phase=phase,
        trials=counts,
        best_trial=_best_status(study, best),
        strategy=StrategyStatus(name=strategy.name, seed=study_seed(study), chosen=strategy.chosen, reason=strategy.reason),
        observed_generation=study.metadata.generation,
        start_time=previous.start_time or (timestamp(now) if (trials or actions) else None),
        completion_time=(previous.completion_time or timestamp(now)) if phase in ("Succeeded", "Failed") else None,
    )
    status.conditions = _conditions(previous, phase, reason, message, study.metadata.generation, now)
    return Plan(tuple(actions), status)


def _prune(stoppers: Sequence[Stopper], trials: Sequence[TrialRecord]) -> list[StopTrial]:
    """Stop the running trials the stoppers give up on, in index order."""
    stops = []
    for trial in sorted(trials, key=lambda t: t.index):
        if trial.phase == "Running":
            decision = decide(stoppers, trial, trials)
            if decision is not None:
                stops.append(StopTrial(trial.name, "Pruned", decision.reason, decision.message))
    return stops


def _new_trials(
    study: HyperparameterStudy, trials: Sequence[TrialRecord], strategy: Strategy, room: int
) -> tuple[list[CreateTrial], bool]:
    """Up to `room` new trials: first re-runs of trials stopped unfinished, then suggestions.

    Also says whether the strategy has nothing left to suggest.

    Strategies number their suggestions from 0 without gaps (re-runs are not suggestions),
    so a grid resumes at the right point and random search draws the same sequence as an
    uninterrupted study would.
    """
    created: list[CreateTrial] = []
    next_index = max((t.index for t in trials), default=-1) + 1
    rerun = {t.rerun_of for t in trials if t.rerun_of is not None}
    for trial in sorted(trials, key=lambda t: t.index):
        if len(created) == room:
            break
        if trial.phase == "Stopped" and trial.name not in rerun:
            created.append(CreateTrial(trial_name(study.metadata.name, next_index), next_index,
                                       dict(trial.parameters), rerun_of=trial.name))
            next_index += 1
    history = list(trials) + [TrialRecord(c.name, c.index, c.parameters, rerun_of=c.rerun_of) for c in created]
    sequence = sum(1 for t in history if t.rerun_of is None)
    size = strategy.size()
    exhausted = size is not None and sequence >= size
    while len(created) < room and not exhausted:
        parameters = strategy.suggest(sequence, history)
        if parameters is None:
            exhausted = True
            break
        action = CreateTrial(trial_name(study.metadata.name, next_index), next_index, parameters)
        created.append(action)
        history.append(TrialRecord(action.name, action.index, parameters))
        next_index += 1
        sequence += 1
        exhausted = size is not None and sequence >= size
    return created, exhausted


def _best_status(study: HyperparameterStudy, best: Optional[TrialRecord]) -> Optional[BestTrial]:
    if best is None:
        return None
    return BestTrial(
        name=best.name,
        parameters=dict(best.parameters),
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
