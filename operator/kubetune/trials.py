"""What the engine knows about a trial: a plain, immutable record built by either body."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from kubetune.api.models import ACTIVE_TRIAL_PHASES, Objective, TrialPhase


@dataclass(frozen=True)
class Report:
    """One intermediate report of a trial: a step (for example an epoch) and metric values."""

    step: Optional[int]
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class TrialRecord:
    name: str
    index: int
    parameters: Mapping[str, Any]
    phase: TrialPhase = "Pending"
    metrics: Mapping[str, float] = field(default_factory=dict)
    history: tuple[Report, ...] = ()
    reason: Optional[str] = None
    message: Optional[str] = None
    #: Set when this trial re-runs the parameters of a trial that was stopped unfinished.
    rerun_of: Optional[str] = None
    #: The stage the trial belongs to (staged studies), and whether it is a learning-rate range test.
    stage: Optional[str] = None
    range_test: bool = False

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_TRIAL_PHASES

    def objective(self, objective: Objective) -> Optional[float]:
        """The trial's final objective value, if it finished with a finite one."""
        if self.phase != "Succeeded":
            return None
        value = self.metrics.get(objective.metric)
        if value is None or not math.isfinite(value):
            return None
        return value


def trial_name(study: str, index: int) -> str:
    """Deterministic trial names: the same study and index always name the same trial."""
    return f"{study}-{index:04d}"
