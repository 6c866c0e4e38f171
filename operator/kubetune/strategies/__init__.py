"""Search strategies, by the name used in spec.strategy.name."""

from __future__ import annotations

import zlib

from kubetune.api.models import HyperparameterStudy
from kubetune.strategies.auto import AutoStrategy
from kubetune.strategies.base import SettingsError, Strategy
from kubetune.strategies.bayesian import BayesianStrategy
from kubetune.strategies.grid import GridStrategy
from kubetune.strategies.lr_range_test import LrRangeTestStrategy
from kubetune.strategies.random import RandomStrategy
from kubetune.strategies.sobol import SobolStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (AutoStrategy, BayesianStrategy, GridStrategy, LrRangeTestStrategy, RandomStrategy,
                                SobolStrategy)
}


def study_seed(study: HyperparameterStudy) -> int:
    """The seed in use: spec.strategy.seed, or one derived from the study's name."""
    if study.spec.strategy.seed is not None:
        return study.spec.strategy.seed
    return zlib.crc32(study.metadata.name.encode()) & 0x7FFFFFFF


def make_strategy(study: HyperparameterStudy) -> Strategy:
    spec = study.spec
    cls = STRATEGIES[spec.strategy.name]
    return cls(spec.parameters, spec.objective, study_seed(study), spec.strategy.settings, spec.budget)


__all__ = ["STRATEGIES", "SettingsError", "Strategy", "make_strategy", "study_seed"]
