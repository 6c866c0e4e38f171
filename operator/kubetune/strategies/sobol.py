from __future__ import annotations

from typing import Any, Optional, Sequence

from kubetune.strategies.base import Strategy
from kubetune.strategies.unitcube import UnitCube, sobol_points
from kubetune.trials import TrialRecord


class SobolStrategy(Strategy):
    """A scrambled Sobol sequence: quasi-random points that fill the space evenly.

    Like random search it ignores results, but its first n trials cover the space far more
    evenly than n independent draws (no clumps, no gaps), so small budgets see more of it.
    Trial `index` is point `index` of the sequence scrambled by the seed.
    """

    name = "sobol"

    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        cube = UnitCube(self.parameters)
        return cube.decode(sobol_points(cube.dimension, self.seed, index, 1)[0].tolist())
