"""Choosing a learning rate from a learning-rate range test (pure: no I/O, no torch).

A range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section
3.3; fastai's `lr_find`) trains for a short while with the learning rate growing
exponentially, and records the smoothed training loss at each learning rate. The curve is
flat while the rate is too small to matter, falls while the rate is useful, and turns up
when training becomes unstable. A rule turns that curve into one learning rate:

  divergence  one tenth of the learning rate at which the loss starts to diverge: the
              minimum of the curve, once a later point confirms the rise by being clearly
              above it; one tenth of the last learning rate tried if it never diverges.
              Smith's and fastai's "an order of magnitude below where the loss blows up".
              The default: on the reference trainer (benchmarks/bench_lr_range.py) it is
              the only rule within a factor of 3 of the best learning rate for both Adam
              and SGD with momentum.
  steepest    where the loss falls fastest per decade of learning rate (fastai's `steep`,
              made robust: a least-squares slope over neighbouring points, and only points
              up to the loss minimum count). Good for Adam; too high for SGD with momentum,
              whose smoothed loss falls fastest right at the edge of stability.
  valley      fastai's `valley`: the longest stretch over which the loss keeps decreasing,
              and the point two thirds of the way along it. The lowest of the three: the
              stretch usually starts on the flat part of the curve.

The loss is the smoothed loss the trial reports: an exponential average lags the loss
itself, so every feature of the curve sits at a higher learning rate than it would without
smoothing; that is why the default rule reads the minimum, not the blow-up after it, and why
steepest lands high (see docs/lr-range-test.md).

The curve is a list of (lr, loss) points; curve_from_history builds it from a trial's
reports (metrics `lr` and `loss`, as the trial SDK's range test reports them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from kubetune.trials import Report

RULES = ("steepest", "valley", "divergence")
DEFAULT_RULE = "divergence"
MIN_POINTS = 5

# steepest: the slope at a point is fitted to the points within this many decades of it
# (and at least one neighbour on each side).
SLOPE_HALF_WIDTH_DECADES = 0.15
# valley: the chosen point lies this far along the longest decreasing stretch (in log lr).
VALLEY_FRACTION = 2 / 3
# divergence: the loss has diverged once it rises above its minimum by this fraction of the
# larger of |minimum| and the descent (first loss minus minimum); the choice is lr / DIVISOR.
DIVERGENCE_RISE = 0.25
DIVERGENCE_DIVISOR = 10.0

Curve = list[tuple[float, float]]


@dataclass(frozen=True)
class Choice:
    """The learning rate a rule chose, and one sentence that says why (with the numbers)."""

    learning_rate: float
    rule: str
    message: str


def curve_from_history(history: Iterable[Report]) -> Curve:
    """The (lr, loss) points of a range test's reports, in step order.

    A report counts when it has a step and finite `lr` > 0 and `loss` metrics; of several
    reports with the same step the last one counts.
    """
    by_step: dict[int, Report] = {}
    for report in history:
        if report.step is not None:
            by_step[report.step] = report
    curve: Curve = []
    for step in sorted(by_step):
        metrics = by_step[step].metrics
        lr, loss = metrics.get("lr"), metrics.get("loss")
        if _finite(lr) and _finite(loss) and lr > 0:
            curve.append((float(lr), float(loss)))
    return curve


def choose(curve: Sequence[tuple[float, float]], rule: str = DEFAULT_RULE) -> Choice:
    """The learning rate that `rule` (one of RULES) picks from a range-test curve.

    Points are taken in order of learning rate (a repeated learning rate keeps its last
    loss). Raises ValueError for an unknown rule, for fewer than MIN_POINTS usable points,
    and, for steepest and valley, when the loss never decreases (the range starts too high).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} (choose from {', '.join(RULES)})")
    points = _usable(curve)
    if len(points) < MIN_POINTS:
        raise ValueError(f"a learning-rate range test needs at least {MIN_POINTS} points with a finite "
                         f"lr > 0 and loss to choose from; got {len(points)}")
    xs = [math.log10(lr) for lr, _ in points]
    ys = [loss for _, loss in points]
    lowest = min(range(len(ys)), key=ys.__getitem__)  # the first of equal minima
    if rule == "divergence":
        return _divergence(points, ys, lowest)
    if lowest == 0:
        raise ValueError(f"the loss never decreases: it is lowest at the first point (lr={points[0][0]:.2g}, "
                         f"loss {ys[0]:.3g}) of {len(points)}; start the range test at a lower learning rate "
                         f"or use the divergence rule")
    if rule == "steepest":
        return _steepest(points, xs, ys, lowest)
    return _valley(points, xs, ys, lowest)


def _steepest(points: Curve, xs: list[float], ys: list[float], lowest: int) -> Choice:
    """The point up to the minimum with the most negative least-squares slope d loss / d log10 lr.

    Each slope is fitted to the points within SLOPE_HALF_WIDTH_DECADES of the point (at least
    one on each side), all of them at or before the minimum: the rise after the minimum never
    counts, and one noisy step does not make a steep slope on its own. Ties go to the lower lr.
    """
    best, best_slope = 0, math.inf
    for i in range(lowest + 1):
        lo, hi = i, i
        while lo > 0 and (xs[i] - xs[lo - 1] <= SLOPE_HALF_WIDTH_DECADES or lo == i):
            lo -= 1
        while hi < lowest and (xs[hi + 1] - xs[i] <= SLOPE_HALF_WIDTH_DECADES or hi == i):
            hi += 1
        slope = _slope(xs[lo:hi + 1], ys[lo:hi + 1])
        if slope < best_slope:
            best, best_slope = i, slope
    lr, loss = points[best]
    return Choice(lr, "steepest", f"steepest descent of the smoothed loss at lr={lr:.2e} (loss {loss:.3g}, "
                                  f"slope {best_slope:.3g} per decade) among {len(points)} points")


def _valley(points: Curve, xs: list[float], ys: list[float], lowest: int) -> Choice:
    """fastai's valley rule: VALLEY_FRACTION of the way down the longest decreasing stretch.

    The stretch is the longest strictly decreasing subsequence of the losses (so a noisy
    step up does not end it; the earliest of equally long ones), from its first to its last
    point; the choice is the point nearest VALLEY_FRACTION of the way along it in log10(lr).
    fastai takes the index halfway through the stretch; in log lr, two thirds of the way
    down is where the descent is still steep but safely before the minimum.
    """
    n = len(ys)
    length = [1] * n   # length of the longest decreasing subsequence ending at i
    start = list(range(n))  # where that subsequence starts
    for i in range(1, n):
        for j in range(i):
            if ys[j] > ys[i] and (length[j] + 1 > length[i]
                                  or (length[j] + 1 == length[i] and start[j] < start[i])):
                length[i], start[i] = length[j] + 1, start[j]
    end = max(range(n), key=lambda i: (length[i], -i))
    first = start[end]
    target = xs[first] + VALLEY_FRACTION * (xs[end] - xs[first])
    pick = min(range(first, end + 1), key=lambda i: (abs(xs[i] - target), i))
    lr, loss = points[pick]
    return Choice(lr, "valley", f"{VALLEY_FRACTION:.0%} down the longest valley of the smoothed loss, from "
                                f"lr={points[first][0]:.2e} (loss {ys[first]:.3g}) to lr={points[end][0]:.2e} "
                                f"(loss {ys[end]:.3g}): lr={lr:.2e} (loss {loss:.3g}) among {len(points)} points")


def _divergence(points: Curve, ys: list[float], lowest: int) -> Choice:
    """A tenth of the lr at which the loss starts to diverge, else a tenth of the last lr.

    The loss starts to diverge at its minimum when a later point is clearly above it: higher
    by more than DIVERGENCE_RISE times the larger of |minimum| and the descent before it
    (first loss minus minimum), so noise around a flat minimum is not divergence. Without
    such a point the loss never diverged within the range, and the last lr is the edge.
    """
    minimum = ys[lowest]
    threshold = minimum + DIVERGENCE_RISE * max(abs(minimum), ys[0] - minimum)
    rise = next((i for i in range(lowest + 1, len(ys)) if ys[i] > threshold), None)
    if rise is None:
        lr = points[-1][0] / DIVERGENCE_DIVISOR
        return Choice(lr, "divergence", f"the smoothed loss never diverges up to the last lr={points[-1][0]:.2e} "
                                        f"(loss {ys[-1]:.3g}, minimum {minimum:.3g}); a tenth of that: lr={lr:.2e}, "
                                        f"among {len(points)} points")
    lr = points[lowest][0] / DIVERGENCE_DIVISOR
    return Choice(lr, "divergence", f"the smoothed loss starts to diverge at lr={points[lowest][0]:.2e} (minimum "
                                    f"{minimum:.3g}, then {ys[rise]:.3g} at lr={points[rise][0]:.2e}); a tenth of "
                                    f"that: lr={lr:.2e}, among {len(points)} points")


def _usable(curve: Sequence[tuple[float, float]]) -> Curve:
    by_lr: dict[float, float] = {}
    for lr, loss in curve:
        if _finite(lr) and _finite(loss) and lr > 0:
            by_lr[float(lr)] = float(loss)
    return sorted(by_lr.items())


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (at least two distinct xs)."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return sxy / sxx


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
