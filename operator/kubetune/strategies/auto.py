from __future__ import annotations

import importlib.util
from typing import Any, Mapping, Optional, Sequence

from kubetune.api.models import Budget, Objective, Parameter
from kubetune.strategies.base import Strategy
from kubetune.strategies.bayesian import BayesianStrategy, default_initial_trials
from kubetune.strategies.random import RandomStrategy
from kubetune.strategies.sobol import SobolStrategy
from kubetune.trials import TrialRecord

#: Below this many trials auto runs Sobol: a model fitted on a handful of results steers too few
#: trials to beat even coverage of the space.
MIN_MODEL_BUDGET = 10


class AutoStrategy(Strategy):
    """Picks a strategy from the search space and the budget, and says which and why.

    - Bayesian optimisation when most parameters are numeric and the budget leaves the model
      trials to steer after its initial design: that is where it saves the most trials.
    - Sobol otherwise: for mostly categorical spaces (a distance between choices says little,
      so a model learns slowly; even coverage of the combinations is the safer bet) and for
      budgets too small for a model to pay off.
    - Random search when torch (which both of the above use) is not installed.
    Grid search is never picked: it spends the budget on one corner of the space unless the
    budget covers all of it, so it runs only when asked for by name.

    The choice depends only on the spec, so it stays the same for the whole study.
    """

    name = "auto"

    def __init__(self, parameters: Sequence[Parameter], objective: Objective, seed: int,
                 settings: Mapping[str, Any], budget: Optional[Budget] = None) -> None:
        super().__init__(parameters, objective, seed, settings, budget)
        chosen, self.reason = choose(self.parameters, self.budget)
        self.chosen = chosen.name
        self.delegate = chosen(self.parameters, objective, seed, {}, self.budget)

    def size(self) -> Optional[int]:
        return self.delegate.size()

    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        return self.delegate.suggest(index, history)


def choose(parameters: Sequence[Parameter], budget: Budget) -> tuple[type[Strategy], str]:
    """The strategy for this space and budget, and a one-line reason for the status."""
    if importlib.util.find_spec("torch") is None:
        return RandomStrategy, "torch is not installed, so neither Bayesian optimisation nor Sobol is available"
    categorical = sum(p.type == "categorical" for p in parameters)
    numeric = len(parameters) - categorical
    design = default_initial_trials(len(parameters))
    if categorical > numeric:
        return SobolStrategy, (
            f"{categorical} of {len(parameters)} parameters are categorical: a model learns little from "
            f"distances between choices, so Sobol covers the combinations evenly"
        )
    if budget.max_trials < max(MIN_MODEL_BUDGET, 2 * design):
        return SobolStrategy, (
            f"maxTrials={budget.max_trials} leaves too few trials after a {design}-trial initial design "
            f"for a model to pay off, so Sobol covers the space evenly"
        )
    return BayesianStrategy, (
        f"{numeric} of {len(parameters)} parameters are numeric and maxTrials={budget.max_trials}: "
        f"Bayesian optimisation (Gaussian process, log expected improvement) after a {design}-trial Sobol design"
    )
