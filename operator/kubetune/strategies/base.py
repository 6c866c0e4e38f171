"""The strategy interface.

A strategy proposes the parameters of trial number `index` from the study's history. It is
a pure function of (search space, seed, settings, index, history): the same inputs give the
same suggestion, so a restarted runner or operator continues exactly where it was, and
parallel trials are reproducible whatever order they finish in.

The engine calls `suggest` once per new trial, in index order. Trials created earlier in
the same planning round are already in `history` as Pending, so a strategy can spread
parallel suggestions apart.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Optional, Sequence

from kubetune.api.models import Budget, Objective, Parameter
from kubetune.trials import TrialRecord


class SettingsError(ValueError):
    """A strategy setting is wrong; `key` names it under spec.strategy.settings."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Strategy(abc.ABC):
    name: ClassVar[str]
    #: Settings this strategy accepts, with a one-line description each (shown in errors).
    settings_help: ClassVar[Mapping[str, str]] = {}
    #: For strategies that delegate (auto): the strategy doing the work and why it was
    #: chosen. The engine shows both in status.strategy.
    chosen: Optional[str] = None
    reason: Optional[str] = None

    def __init__(
        self,
        parameters: Sequence[Parameter],
        objective: Objective,
        seed: int,
        settings: Mapping[str, Any],
        budget: Optional[Budget] = None,
    ) -> None:
        unknown = sorted(set(settings) - set(self.settings_help))
        if unknown:
            allowed = ", ".join(f"{k} ({v})" for k, v in self.settings_help.items()) or "none"
            raise SettingsError(unknown[0], f"unknown setting for strategy {self.name}; allowed: {allowed}")
        self.parameters = list(parameters)
        self.objective = objective
        self.seed = seed
        self.settings = dict(settings)
        self.budget = budget or Budget()

    def size(self) -> Optional[int]:
        """How many distinct suggestions exist, or None when there is no limit."""
        return None

    @abc.abstractmethod
    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        """Parameters for trial `index`, or None when the strategy has nothing left to try."""
