from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from kubetune import space
from kubetune.api.models import Budget, Objective, Parameter
from kubetune.strategies.base import SettingsError, Strategy
from kubetune.trials import TrialRecord


class GridStrategy(Strategy):
    """Every combination of the parameters' values, in order (the last parameter varies fastest).

    Continuous floats need `settings.resolution` (points per parameter) or a `step`.
    The study ends when the grid is exhausted.
    """

    name = "grid"
    settings_help = {"resolution": "points per continuous parameter, e.g. 5"}

    def __init__(self, parameters: Sequence[Parameter], objective: Objective, seed: int,
                 settings: Mapping[str, Any], budget: Optional[Budget] = None) -> None:
        super().__init__(parameters, objective, seed, settings, budget)
        resolution = self.settings.get("resolution")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
            raise SettingsError("resolution", f"must be a whole number of at least 1, got {resolution!r}")
        self.axes: list[list[Any]] = []
        for p in self.parameters:
            values = space.grid_values(p, resolution)
            if values is None:
                raise SettingsError(
                    "resolution",
                    f"grid search needs a finite set of values, but parameter {p.name!r} is a continuous float; "
                    f"set spec.strategy.settings.resolution (points per continuous parameter, e.g. 5) "
                    f"or give {p.name!r} a step",
                )
            self.axes.append(values)

    def size(self) -> int:
        return math.prod(len(axis) for axis in self.axes)

    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        if index >= self.size():
            return None
        point: dict[str, Any] = {}
        for p, axis in zip(reversed(self.parameters), reversed(self.axes)):
            index, position = divmod(index, len(axis))
            point[p.name] = axis[position]
        return {p.name: point[p.name] for p in self.parameters}
