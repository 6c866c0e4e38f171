"""Choosing a learning rate from a range-test curve (kubetune.lr_range), on synthetic curves."""

from __future__ import annotations

import math

import pytest

from kubetune import lr_range
from kubetune.trials import Report

# A range test's curve: 100 learning rates from 1e-7 to 10, evenly spaced in log10.
LOG_LRS = [-7 + 8 * i / 99 for i in range(100)]
DESCENT_AT = -3.0  # the loss falls fastest at lr=1e-3


def loss_at(x: float, drift: float = 0.0) -> float:
    """Flat near 2.3 (rising by `drift` per decade), a sigmoid fall at DESCENT_AT, then a blow-up."""
    fall = 2.0 / (1 + math.exp(-(x - DESCENT_AT) / 0.3))
    blow_up = 0.05 * 10 ** (2 * (x + 1))  # 0.05 at lr=0.1, 5 at lr=1
    return 2.3 + drift * (x + 7) - fall + blow_up


def curve(drift: float = 0.0, log_lrs=LOG_LRS) -> list[tuple[float, float]]:
    return [(10 ** x, loss_at(x, drift)) for x in log_lrs]


def spacing(lr: float, target: float, points: int = 1) -> bool:
    """lr is within `points` grid steps of target (one step is 8/99 of a decade)."""
    return abs(math.log10(lr) - math.log10(target)) <= points * 8 / 99 + 1e-9


def test_steepest_finds_the_fastest_fall():
    choice = lr_range.choose(curve(), "steepest")
    assert choice.rule == "steepest"
    assert spacing(choice.learning_rate, 1e-3)
    # The grid has no point at exactly 1e-3; its neighbours are 9.11e-04 and 1.10e-03. The
    # sigmoid falls 2.0 / (4 * 0.3) = 1.67 per decade at its middle.
    assert choice.message.startswith("steepest descent of the smoothed loss at lr=9.11e-04 (loss 1.37, slope -1.6")
    assert choice.message.endswith("per decade) among 100 points")


def test_steepest_ignores_the_blow_up_and_a_single_glitch():
    points = curve()
    # A one-point dip on the flat part: as a plain difference quotient it is steeper (-2.5 per
    # decade) than the real fall; a least-squares slope over its neighbours is not.
    glitch = 20
    points[glitch] = (points[glitch][0], points[glitch][1] - 0.2)
    naive = min(range(len(points) - 1), key=lambda i: (points[i + 1][1] - points[i][1])
                / (math.log10(points[i + 1][0]) - math.log10(points[i][0])))
    assert naive in (glitch - 1, glitch)
    assert spacing(lr_range.choose(points, "steepest").learning_rate, 1e-3)


def test_steepest_survives_a_thinned_curve():
    # The termination message may keep only every fourth report of a long test.
    choice = lr_range.choose(curve()[::4], "steepest")
    assert spacing(choice.learning_rate, 1e-3, points=2)
    assert "among 25 points" in choice.message


def test_divergence_is_a_tenth_of_where_the_loss_turns_up():
    points = curve()
    lowest_lr = min(points, key=lambda p: p[1])[0]
    assert 10 ** -2.2 < lowest_lr < 10 ** -1.2  # where the blow-up overtakes the fall
    choice = lr_range.choose(points, "divergence")
    assert choice.learning_rate == pytest.approx(lowest_lr / 10)
    assert "starts to diverge at lr=" in choice.message and "a tenth of that" in choice.message


def test_divergence_without_a_blow_up_is_a_tenth_of_the_last_lr():
    points = [(lr, 2.3 - 2.0 / (1 + math.exp(-(math.log10(lr) - DESCENT_AT) / 0.3)))
              for lr, _ in curve()]
    choice = lr_range.choose(points, "divergence")
    assert choice.learning_rate == pytest.approx(1.0)  # 10 / 10
    assert "never diverges up to the last lr=1.00e+01" in choice.message


def test_noise_at_the_minimum_is_not_divergence():
    # A flat bottom with small wobbles, then nothing clearly above it: no divergence yet.
    points = [(10 ** (-4 + i / 10), 0.5 + (0.01 if i % 2 else 0.0) + max(0.0, 1.5 - i / 10)) for i in range(40)]
    choice = lr_range.choose(points, "divergence")
    assert choice.learning_rate == pytest.approx(points[-1][0] / 10)
    assert "never diverges" in choice.message


def test_valley_is_two_thirds_along_the_longest_descent():
    # With a slowly rising flat part (as a smoothed loss often is), the longest decreasing
    # stretch runs from the curve's peak before the fall to its minimum.
    points = curve(drift=0.002)
    losses = [loss for _, loss in points]
    lowest = losses.index(min(losses))
    peak = losses.index(max(losses[:lowest]))
    start, end = math.log10(points[peak][0]), math.log10(points[lowest][0])
    choice = lr_range.choose(points, "valley")
    assert spacing(choice.learning_rate, 10 ** (start + 2 / 3 * (end - start)))
    assert choice.learning_rate < lr_range.choose(points, "divergence").learning_rate * 10
    assert "down the longest valley of the smoothed loss" in choice.message


def test_rules_are_deterministic_and_order_free():
    points = curve(drift=0.002)
    shuffled = points[1::2] + points[::2]
    for rule in lr_range.RULES:
        assert lr_range.choose(points, rule) == lr_range.choose(shuffled, rule)


def test_default_rule_is_one_of_the_rules():
    assert lr_range.DEFAULT_RULE in lr_range.RULES
    assert lr_range.choose(curve()).rule == lr_range.DEFAULT_RULE


def test_curve_from_history_orders_by_step_and_keeps_usable_points():
    history = [
        Report(2, {"lr": 1e-3, "loss": 1.5}),
        Report(0, {"lr": 1e-5, "loss": 2.3, "raw_loss": 2.4}),
        Report(1, {"lr": 1e-4, "loss": 9.9}),
        Report(1, {"lr": 1e-4, "loss": 2.1}),           # the same step again: the last counts
        Report(3, {"lr": 1e-2, "loss": float("nan")}),  # not finite
        Report(4, {"lr": 0.0, "loss": 1.0}),            # lr must be > 0
        Report(5, {"loss": 1.0}),                       # no lr
        Report(None, {"lr": 1.0, "loss": 1.0}),         # no step
        Report(6, {"lr": 1e-1, "loss": 1.2}),
    ]
    assert lr_range.curve_from_history(history) == [(1e-5, 2.3), (1e-4, 2.1), (1e-3, 1.5), (1e-1, 1.2)]


def test_too_few_points_is_a_clear_error():
    points = curve()[:4] + [(float("inf"), 1.0), (1e-3, float("nan")), (-1.0, 2.0)]
    with pytest.raises(ValueError, match="needs at least 5 points with a finite lr > 0 and loss to choose from; got 4"):
        lr_range.choose(points, "divergence")
    with pytest.raises(ValueError, match="got 0"):
        lr_range.choose([], "steepest")


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown rule 'steep' \(choose from steepest, valley, divergence\)"):
        lr_range.choose(curve(), "steep")


def test_a_loss_that_only_rises_has_no_descent_to_choose_from():
    points = [(10 ** (-3 + i / 10), 1.0 + i / 10) for i in range(20)]
    for rule in ("steepest", "valley"):
        with pytest.raises(ValueError, match=r"the loss never decreases: it is lowest at the first point \(lr=0.001"):
            lr_range.choose(points, rule)
    # divergence still answers: the loss diverges from the very first learning rate.
    assert lr_range.choose(points, "divergence").learning_rate == pytest.approx(1e-4)
