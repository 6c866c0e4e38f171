"""The contract every strategy keeps, plus what is specific to random and grid search."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from kubetune import space
from kubetune.api.models import Parameter
from kubetune.api.validation import StudyInvalid, parse_study
from kubetune.strategies import STRATEGIES, make_strategy
from kubetune.trials import TrialRecord

from conftest import make_study, study_manifest

MIXED_SPACE = [
    {"name": "lr", "type": "float", "min": 1e-5, "max": 1.0, "scale": "log"},
    {"name": "batch_size", "type": "int", "min": 16, "max": 512, "scale": "pow2"},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "step": 0.1},
    {"name": "layers", "type": "int", "min": 1, "max": 4},
    {"name": "width", "type": "int", "min": 8, "max": 1024, "scale": "log"},
    {"name": "optimizer", "type": "categorical", "values": ["sgd", "adam", "adamw"]},
]


def strategy_for(name: str, seed: int = 3, parameters=None):
    settings = {"resolution": 3} if name == "grid" else {}
    return make_strategy(make_study(parameters or MIXED_SPACE, strategy={"name": name, "seed": seed, "settings": settings}))


def finished(index: int, parameters: dict, loss: float) -> TrialRecord:
    return TrialRecord(f"quad-{index:04d}", index, parameters, phase="Succeeded", metrics={"loss": loss})


def in_space(parameter: Parameter, value) -> bool:
    if parameter.type == "categorical":
        return value in parameter.values
    if not parameter.min <= value <= parameter.max:
        return False
    if parameter.type == "int" and not isinstance(value, int):
        return False
    allowed = space.discrete_values(parameter)
    return allowed is None or value in allowed


@pytest.mark.parametrize("name", sorted(STRATEGIES))
class TestStrategyContract:
    def test_suggestions_lie_in_the_space(self, name):
        strategy = strategy_for(name)
        history = []
        count = min(20, strategy.size() or 20)
        for index in range(count):
            suggestion = strategy.suggest(index, history)
            assert suggestion is not None
            assert list(suggestion) == [p["name"] for p in MIXED_SPACE]
            for parameter in strategy.parameters:
                assert in_space(parameter, suggestion[parameter.name]), (parameter.name, suggestion)
            history.append(finished(index, suggestion, loss=random.Random(index).random()))
        if strategy.size() == count:
            assert strategy.suggest(count, history) is None

    def test_same_seed_and_history_give_same_suggestions(self, name):
        history = [finished(i, strategy_for(name).suggest(i, []), loss=i / 10) for i in range(5)]
        a = [strategy_for(name, seed=11).suggest(i, history[:i]) for i in range(5, 10)]
        b = [strategy_for(name, seed=11).suggest(i, history[:i]) for i in range(5, 10)]
        assert a == b

    def test_parallel_order_does_not_change_suggestions(self, name):
        # Trials 0..3 run in parallel; whichever finishes first, trial 4's suggestion is the same.
        strategy = strategy_for(name)
        running = [TrialRecord(f"t{i}", i, strategy.suggest(i, []), phase="Running") for i in range(4)]
        forward = strategy.suggest(4, running)
        backward = strategy.suggest(4, list(reversed(running)))
        assert forward == backward

    def test_suggestions_are_json_scalars(self, name):
        suggestion = strategy_for(name).suggest(0, [])
        assert all(isinstance(v, (bool, int, float, str)) for v in suggestion.values())


def test_random_differs_by_seed():
    assert strategy_for("random", seed=1).suggest(0, []) != strategy_for("random", seed=2).suggest(0, [])


def test_random_log_scale_is_log_uniform():
    # Each decade of [1e-5, 1] should get a fifth of the samples; a linear sampler would put
    # ~90% in the top decade. Chi-square with 4 degrees of freedom, 0.001 critical value 18.5.
    strategy = strategy_for("random", parameters=[{"name": "lr", "type": "float", "min": 1e-5, "max": 1.0, "scale": "log"}])
    n = 5000
    decades = Counter(min(4, int(math.floor(math.log10(strategy.suggest(i, [])["lr"]) + 5))) for i in range(n))
    expected = n / 5
    chi2 = sum((decades[d] - expected) ** 2 / expected for d in range(5))
    assert chi2 < 18.5, decades


def test_random_log_int_favours_small_values_like_log_uniform():
    strategy = strategy_for("random", parameters=[{"name": "width", "type": "int", "min": 1, "max": 1000, "scale": "log"}])
    values = [strategy.suggest(i, [])["width"] for i in range(4000)]
    below_32 = sum(v < 32 for v in values) / len(values)
    # log-uniform: P(v < 32) = log(31.5/0.5)/log(1000.5/0.5) ~= 0.545; uniform would give ~0.03
    assert 0.50 < below_32 < 0.59


def test_random_pow2_gives_each_power_equally():
    strategy = strategy_for("random", parameters=[{"name": "bs", "type": "int", "min": 16, "max": 512, "scale": "pow2"}])
    counts = Counter(strategy.suggest(i, [])["bs"] for i in range(3000))
    assert set(counts) == {16, 32, 64, 128, 256, 512}
    assert min(counts.values()) > 3000 / 6 * 0.8


def test_random_int_and_categorical_are_uniform():
    strategy = strategy_for("random", parameters=[
        {"name": "layers", "type": "int", "min": 1, "max": 4},
        {"name": "act", "type": "categorical", "values": ["relu", "gelu", "tanh"]},
    ])
    samples = [strategy.suggest(i, []) for i in range(3000)]
    layers = Counter(s["layers"] for s in samples)
    acts = Counter(s["act"] for s in samples)
    assert set(layers) == {1, 2, 3, 4} and min(layers.values()) > 600
    assert set(acts) == {"relu", "gelu", "tanh"} and min(acts.values()) > 850


def test_grid_is_the_full_cartesian_product_in_order():
    strategy = strategy_for("grid", parameters=[
        {"name": "a", "type": "categorical", "values": ["x", "y"]},
        {"name": "b", "type": "int", "min": 1, "max": 3},
    ])
    assert strategy.size() == 6
    points = [strategy.suggest(i, []) for i in range(6)]
    assert points == [{"a": a, "b": b} for a in ["x", "y"] for b in [1, 2, 3]]
    assert strategy.suggest(6, []) is None


def test_grid_resolution_spaces_log_parameters_evenly_in_log_space():
    strategy = make_strategy(make_study(
        [{"name": "lr", "type": "float", "min": 1e-4, "max": 1.0, "scale": "log"}],
        strategy={"name": "grid", "settings": {"resolution": 5}},
    ))
    values = [strategy.suggest(i, [])["lr"] for i in range(strategy.size())]
    assert values == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_grid_with_step_needs_no_resolution():
    strategy = make_strategy(make_study(
        [{"name": "dropout", "type": "float", "min": 0.0, "max": 0.3, "step": 0.1}], strategy={"name": "grid"},
    ))
    assert [strategy.suggest(i, [])["dropout"] for i in range(strategy.size())] == [0.0, 0.1, 0.2, 0.3]


def test_grid_over_a_continuous_space_without_resolution_is_a_clear_error():
    with pytest.raises(StudyInvalid) as info:
        parse_study(study_manifest(strategy={"name": "grid"}))
    [error] = info.value.errors
    assert error.path == "spec.strategy.settings.resolution"
    assert "parameter 'x' is a continuous float" in error.message


def test_unknown_strategy_setting_is_named():
    with pytest.raises(StudyInvalid) as info:
        parse_study(study_manifest(strategy={"name": "grid", "settings": {"resolutoin": 3}}))
    assert info.value.errors[0].path == "spec.strategy.settings.resolutoin"
    assert "resolution" in info.value.errors[0].message
