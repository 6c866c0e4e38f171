"""Early-stopping rules by the name used in spec.earlyStopping.name, plus the divergence guard."""

from __future__ import annotations

from typing import Optional, Sequence

from kubetune.api.models import HyperparameterStudy
from kubetune.stoppers.asha import AshaStopper, HyperbandStopper
from kubetune.stoppers.base import DIVERGED, EARLY_STOPPED, Decision, Stopper
from kubetune.stoppers.divergence import DivergenceGuard
from kubetune.stoppers.median import MedianStopper
from kubetune.trials import TrialRecord

# The rules spec.earlyStopping.name can name; the divergence guard is configured apart from
# them (spec.earlyStopping.divergence) because it runs beside whichever rule is chosen.
STOPPERS: dict[str, type[Stopper]] = {cls.name: cls for cls in (AshaStopper, HyperbandStopper, MedianStopper)}


def make_rule(study: HyperparameterStudy) -> Optional[Stopper]:
    """The rule named in spec.earlyStopping, or None. Raises SettingsError for bad settings."""
    early = study.spec.early_stopping
    if early is None or early.name is None:
        return None
    return STOPPERS[early.name](study.spec.objective, early.settings)


def make_stoppers(study: HyperparameterStudy) -> list[Stopper]:
    """What the engine asks, in order: the divergence guard (unless disabled), then the rule."""
    early = study.spec.early_stopping
    stoppers: list[Stopper] = []
    guard = early.divergence if early is not None else None
    if guard is None or guard.enabled:
        settings = {"factor": guard.factor} if guard is not None else {}
        stoppers.append(DivergenceGuard(study.spec.objective, settings))
    rule = make_rule(study)
    if rule is not None:
        stoppers.append(rule)
    for stopper in stoppers[1:]:
        stopper._curves = stoppers[0]._curves  # the guard and the rule read the same curves
    return stoppers


def decide(stoppers: Sequence[Stopper], trial: TrialRecord, trials: Sequence[TrialRecord]) -> Optional[Decision]:
    """The first stopper's decision to stop `trial`, or None to let it run."""
    for stopper in stoppers:
        decision = stopper.decide(trial, trials)
        if decision is not None:
            return decision
    return None


def diverged(study: HyperparameterStudy, trial: TrialRecord, trials: Sequence[TrialRecord] = ()) -> Optional[Decision]:
    """The guard's verdict on a trial that ended on its own with an error.

    A trainer may notice its own divergence and exit non-zero (the reference trainer exits 3)
    before an observer could stop it. When its reports show the divergence, the bodies record
    it as the guard would have: Pruned with reason Diverged, not Failed (which would count
    towards maxFailedTrials and be retried). Given the study's other `trials`, a first report
    far above theirs at the same step counts too (a run that blew up in its first epoch).
    """
    guard = next((s for s in make_stoppers(study) if isinstance(s, DivergenceGuard)), None)
    return guard.decide(trial, trials) if guard is not None else None


def max_resource(study: HyperparameterStudy) -> Optional[int]:
    """The step a complete trial reaches, as the rule knows it (asha, hyperband), else None."""
    rule = make_rule(study)
    return rule.max_resource if rule is not None else None


__all__ = ["DIVERGED", "EARLY_STOPPED", "STOPPERS", "Decision", "DivergenceGuard", "Stopper", "decide", "diverged",
           "make_rule", "make_stoppers", "max_resource"]
