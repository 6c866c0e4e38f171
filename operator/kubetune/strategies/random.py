from __future__ import annotations

import random
from typing import Any, Optional, Sequence

from kubetune import space
from kubetune.strategies.base import Strategy
from kubetune.trials import TrialRecord


class RandomStrategy(Strategy):
    """Independent samples: log-uniform on log scales, powers of two for pow2, uniform otherwise.

    Each trial's sample depends only on (seed, index), never on timing or history.
    """

    name = "random"

    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        rng = random.Random(f"kubetune/random/{self.seed}/{index}")
        return {p.name: space.sample(p, rng) for p in self.parameters}
