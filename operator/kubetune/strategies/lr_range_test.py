"""The learning-rate range test as a strategy (Smith 2017, "Cyclical Learning Rates").

One trial trains for about an epoch while its learning rate grows exponentially from minLr to
maxLr, reporting (lr, smoothed loss) at every step, and stops once the loss has clearly
diverged. The engine then picks a learning rate from the curve by a named rule
(kubetune.lr_range) and shows the curve, the value and the rule in status.lrRangeTest; in a
staged study the value is fixed for the stages that follow.

The trial's other parameters take their defaults (Parameter.default, else the middle of the
range). The trainer must support the mode: see docs/lr-range-test.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from kubetune import lr_range, space
from kubetune.api.models import Budget, LrRangeTestRun, Objective, Parameter
from kubetune.strategies.base import SettingsError, Strategy
from kubetune.trials import TrialRecord

DEFAULTS: dict[str, float] = {"minLr": 1e-7, "maxLr": 10.0, "steps": 100, "beta": 0.98, "stopFactor": 4.0}


class LrRangeTestStrategy(Strategy):
    name = "lr-range-test"
    settings_help = {
        "minLr": f"learning rate of the first step, default {DEFAULTS['minLr']:g}",
        "maxLr": f"learning rate of the last step, default {DEFAULTS['maxLr']:g}",
        "steps": f"training steps (mini-batches) from minLr to maxLr, default {DEFAULTS['steps']:g}",
        "beta": f"smoothing of the loss (exponential moving average), default {DEFAULTS['beta']:g}",
        "stopFactor": f"stop once the smoothed loss exceeds this multiple of its best, default {DEFAULTS['stopFactor']:g}",
        "rule": f"how the learning rate is picked from the curve: {', '.join(lr_range.RULES)}; default {lr_range.DEFAULT_RULE}",
        "lrParameter": "the learning-rate parameter; by default the float parameter whose role is learningRate",
    }

    def __init__(self, parameters: Sequence[Parameter], objective: Objective, seed: int,
                 settings: Mapping[str, Any], budget: Optional[Budget] = None) -> None:
        super().__init__(parameters, objective, seed, settings, budget)
        values = {key: _number(settings, key, default) for key, default in DEFAULTS.items()}
        if values["steps"] != int(values["steps"]) or values["steps"] < 5:
            raise SettingsError("steps", "steps must be a whole number of at least 5")
        if not 0 <= values["beta"] < 1:
            raise SettingsError("beta", "beta must be at least 0 and less than 1, for example 0.98")
        if values["stopFactor"] <= 1:
            raise SettingsError("stopFactor", "stopFactor must be greater than 1, for example 4")
        if values["minLr"] <= 0 or values["maxLr"] <= values["minLr"]:
            key = "minLr" if values["minLr"] <= 0 else "maxLr"
            raise SettingsError(key, f"need 0 < minLr < maxLr (got minLr={values['minLr']:g}, maxLr={values['maxLr']:g})")
        self.run_config = LrRangeTestRun(min_lr=values["minLr"], max_lr=values["maxLr"], steps=int(values["steps"]),
                                         beta=values["beta"], stop_factor=values["stopFactor"])
        self.rule = settings.get("rule", lr_range.DEFAULT_RULE)
        if self.rule not in lr_range.RULES:
            raise SettingsError("rule", f"unknown rule {self.rule!r}; choose one of {', '.join(lr_range.RULES)}")
        self.lr_parameter = lr_parameter(self.parameters, settings.get("lrParameter"))

    def size(self) -> Optional[int]:
        return 1

    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        if index > 0:
            return None
        return {p.name: space.default_value(p) for p in self.parameters}


def lr_parameter(parameters: Sequence[Parameter], named: Optional[Any]) -> str:
    """The learning-rate parameter: the one named, else the single float with role learningRate."""
    floats = [p.name for p in parameters if p.type == "float"]
    if named is not None:
        if named not in floats:
            raise SettingsError("lrParameter", f"{named!r} is not a float parameter here; float parameters: {', '.join(floats) or 'none'}")
        return named
    found = [p.name for p in parameters if p.type == "float" and p.effective_role == "learningRate"]
    if len(found) != 1:
        raise SettingsError("lrParameter", (
            "name the learning-rate parameter with lrParameter" if found else
            "no float parameter looks like a learning rate; name it with lrParameter or give it role: learningRate"))
    return found[0]


def _number(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingsError(key, f"{key} must be a number (default {default:g})")
    return float(value)
