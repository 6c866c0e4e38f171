"""`kubetune simulate`: grid, random and Bayesian search side by side on synthetic landscapes.

No trials run: each strategy is driven directly, exactly as the engine drives it (suggestion
number `index`, the history of finished trials), and a landscape function plays the trial.
For each landscape, strategy and seed the simulator records every suggestion and the best
value so far, then writes

    DIR/LANDSCAPE-best-so-far.png  best value so far against trials: median over seeds, interquartile band
    DIR/LANDSCAPE-samples.png      where each strategy sampled (first seed), over the landscape's contours
    DIR/simulate.md                the table printed to stdout

Grid search gets `settings.resolution` set to the largest value whose grid fits in the budget
(the table says how many points that is); grid search is deterministic, so it runs once and
counts for every seed.

The landscapes:

    one-that-matters  four parameters, only x1 changes the loss: the case of Bergstra and Bengio
                      (2012) for random over grid search. A grid of 16 trials tries only 2
                      values of x1; 16 random trials try 16.
    branin            the 2-D Branin function, smooth with three global minima
    learning-rate     a validation loss shaped like a training run's: a log-scaled learning rate
                      whose best value grows with the (pow2) batch size, a divergence cliff above
                      it, and a dropout that matters a little
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

DEFAULT_BUDGET = 30
DEFAULT_SEEDS = 5
DEFAULT_STRATEGIES = ("grid", "random", "bayesian")
COLOURS = {"grid": "#d62728", "random": "#1f77b4", "bayesian": "#2ca02c", "sobol": "#9467bd", "auto": "#8c564b"}


class SimulationError(ValueError):
    """A bad simulate command line: unknown landscape or strategy, a budget too small."""


@dataclass(frozen=True)
class Landscape:
    name: str
    about: str
    parameters: list[dict[str, Any]]  # as in a study's spec.parameters
    function: Callable[[dict[str, Any]], float]  # to minimise
    optimum: float
    best: dict[str, Any]  # where the optimum is (the sample plots fix the other parameters there)
    target: float  # a run "reaches the target" once its best value is at or below this
    shown: tuple[str, str]  # the two parameters the sample plot shows


def one_that_matters(p: dict[str, Any]) -> float:
    return (p["x1"] - 0.37) ** 2


def branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x1"], p["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


def learning_rate(p: dict[str, Any]) -> float:
    """The best learning rate grows with the batch size (a softened linear-scaling rule); a rate
    1.6 decades above it diverges to a flat bad loss; dropout matters a little."""
    log_lr, log_bs = math.log10(p["lr"]), math.log2(p["batch_size"])
    best_log_lr = -3.0 + 0.15 * (log_bs - 6)
    if log_lr > best_log_lr + 1.6:
        return 2.5
    return 0.05 + 0.4 * (log_lr - best_log_lr) ** 2 + 0.8 * (p["dropout"] - 0.2) ** 2


def _unit(name: str) -> dict[str, Any]:
    return {"name": name, "type": "float", "min": 0.0, "max": 1.0}


LANDSCAPES: dict[str, Landscape] = {
    landscape.name: landscape
    for landscape in (
        Landscape("one-that-matters", "4 parameters in [0, 1]; loss = (x1 - 0.37)^2, x2..x4 change nothing",
                  [_unit("x1"), _unit("x2"), _unit("x3"), _unit("x4")], one_that_matters, 0.0,
                  {"x1": 0.37, "x2": 0.5, "x3": 0.5, "x4": 0.5}, 0.001, ("x1", "x2")),
        Landscape("branin", "Branin, 2-D, three global minima (0.398)",
                  [{"name": "x1", "type": "float", "min": -5.0, "max": 10.0},
                   {"name": "x2", "type": "float", "min": 0.0, "max": 15.0}], branin, 0.397887,
                  {"x1": math.pi, "x2": 2.275}, 1.0, ("x1", "x2")),
        Landscape("learning-rate", "log-scaled lr (1e-5..1) tied to a pow2 batch size (16..512), a divergence "
                  "cliff, dropout (0..0.5) matters a little; best 0.05",
                  [{"name": "lr", "type": "float", "min": 1e-5, "max": 1.0, "scale": "log"},
                   {"name": "batch_size", "type": "int", "min": 16, "max": 512, "scale": "pow2"},
                   {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5}], learning_rate, 0.05,
                  {"lr": 1e-3, "batch_size": 64, "dropout": 0.2}, 0.06, ("lr", "batch_size")),
    )
}


# -- running ------------------------------------------------------------------------------


@dataclass
class Run:
    strategy: str
    seed: int
    points: list[dict[str, Any]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def best_so_far(self, budget: int) -> list[float]:
        """The running minimum, padded to the budget when a grid ran out early."""
        curve, best = [], math.inf
        for v in self.values:
            best = min(best, v)
            curve.append(best)
        return curve + [best] * (budget - len(curve))


def _parameters(landscape: Landscape) -> list:
    from kubetune.api.models import Parameter

    return [Parameter.model_validate(p) for p in landscape.parameters]


def grid_resolution(landscape: Landscape, budget: int) -> tuple[int, int]:
    """The largest grid resolution whose grid fits in the budget, and that grid's size."""
    from kubetune.api.models import Objective
    from kubetune.strategies import STRATEGIES

    parameters, chosen = _parameters(landscape), (1, 1)
    for resolution in range(1, budget + 1):
        size = STRATEGIES["grid"](parameters, Objective(metric="loss"), 0, {"resolution": resolution}).size()
        if size > budget:
            break
        if size > chosen[1]:
            chosen = (resolution, size)
    return chosen


def run_strategy(name: str, landscape: Landscape, seed: int, budget: int) -> Run:
    from kubetune.api.models import Budget, Objective
    from kubetune.strategies import STRATEGIES
    from kubetune.trials import TrialRecord

    settings = {"resolution": grid_resolution(landscape, budget)[0]} if name == "grid" else {}
    strategy = STRATEGIES[name](_parameters(landscape), Objective(metric="loss"), seed, settings,
                                Budget(max_trials=budget))
    run, history = Run(name, seed), []
    for index in range(budget):
        point = strategy.suggest(index, history)
        if point is None:  # a finite grid ran out
            break
        value = landscape.function(point)
        run.points.append(point)
        run.values.append(value)
        history.append(TrialRecord(f"t-{index:04d}", index, point, phase="Succeeded", metrics={"loss": value}))
    return run


def simulate(landscape: Landscape, strategies: Sequence[str], budget: int, seeds: int) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {}
    with _one_torch_thread():
        for name in strategies:
            if name == "grid":  # deterministic: one run stands for every seed
                grid = run_strategy(name, landscape, 0, budget)
                runs[name] = [Run(name, seed, grid.points, grid.values) for seed in range(seeds)]
            else:
                runs[name] = [run_strategy(name, landscape, seed, budget) for seed in range(seeds)]
    return runs


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The Bayesian strategy's small GP fits run several times faster on one thread than on
    threads that compete for the cores (4x on a busy 2-core machine)."""
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- summarising --------------------------------------------------------------------------


@dataclass
class Row:
    landscape: str
    strategy: str
    trials: int  # per seed (a grid may run out before the budget)
    mean_best: float
    reached: int
    seeds: int
    median_to_target: Optional[int]


def trials_to_target(run: Run, target: float) -> Optional[int]:
    return next((i + 1 for i, v in enumerate(run.best_so_far(len(run.values))) if v <= target), None)


def summarise(landscape: Landscape, runs: dict[str, list[Run]], budget: int) -> list[Row]:
    rows = []
    for name, group in runs.items():
        finals = [r.best_so_far(budget)[-1] for r in group]
        needed = [trials_to_target(r, landscape.target) for r in group]
        reached = [n for n in needed if n is not None]
        # The lower median over all seeds, "never" counting as worst: None unless half the seeds got there.
        ordered = sorted(needed, key=lambda n: math.inf if n is None else n)
        median = ordered[(len(ordered) - 1) // 2]
        rows.append(Row(landscape.name, name, len(group[0].values), statistics.fmean(finals), len(reached),
                        len(group), median))
    return rows


def markdown_table(rows: Sequence[Row], budget: int, grids: dict[str, tuple[int, int]]) -> str:
    lines = [
        f"| landscape | strategy | trials | mean best at {budget} | mean best - optimum | seeds reaching target "
        "| median trials to target |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        landscape = LANDSCAPES[row.landscape]
        strategy = row.strategy
        if row.strategy == "grid" and row.landscape in grids:
            resolution, size = grids[row.landscape]
            strategy = f"grid ({resolution} per parameter: {size} points)"
        to_target = "-" if row.median_to_target is None else str(row.median_to_target)
        lines.append(f"| {row.landscape} (target {landscape.target:g}) | {strategy} | {row.trials} | "
                     f"{row.mean_best:.4g} | {row.mean_best - landscape.optimum:.3g} | {row.reached}/{row.seeds} | "
                     f"{to_target} |")
    lines.append("")
    lines.append(f"Grid search uses the largest resolution whose grid fits in the budget of {budget} trials. "
                 "Median trials to target: over all seeds, '-' when fewer than half reach the target.")
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------


def best_so_far_figure(landscape: Landscape, runs: dict[str, list[Run]], budget: int):
    from matplotlib.ticker import MaxNLocator

    from kubetune.plots import new_figure

    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    xs = list(range(1, budget + 1))
    floor = 1e-9  # regret 0 (the optimum itself) drawn at the bottom of the log axis
    for name, group in runs.items():
        curves = [[max(v - landscape.optimum, floor) for v in r.best_so_far(budget)] for r in group]
        columns = list(zip(*curves))
        median = [statistics.median(c) for c in columns]
        low = [_quantile(c, 0.25) for c in columns]
        high = [_quantile(c, 0.75) for c in columns]
        colour = COLOURS.get(name)
        ran = len(group[0].values)
        label = f"{name} (all {ran} points, then flat)" if name == "grid" and ran < budget else name
        ax.plot(xs, median, color=colour, linewidth=2, label=label)
        if len(group) > 1:
            ax.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)
    ax.axhline(max(landscape.target - landscape.optimum, floor), color="#555", linestyle="--", linewidth=1,
               label="target")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials")
    ax.set_ylabel("best loss so far - optimum (log scale)")
    seeds = len(next(iter(runs.values())))
    ax.set_title(f"{landscape.name}: median over {seeds} seeds, band = interquartile range")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _padded(p: dict[str, Any]) -> tuple[float, float]:
    """The parameter's range and a little more, so points on the bounds are drawn whole."""
    if p.get("scale") in ("log", "pow2"):
        factor = (p["max"] / p["min"]) ** 0.04
        return p["min"] / factor, p["max"] * factor
    pad = 0.04 * (p["max"] - p["min"])
    return p["min"] - pad, p["max"] + pad


def samples_figure(landscape: Landscape, runs: dict[str, list[Run]]):
    """One panel per strategy: the first seed's samples of the two shown parameters, numbered
    by trial order (colour), over the landscape's contours with the other parameters at their best."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    from kubetune.plots import new_figure

    parameters = {p["name"]: p for p in landscape.parameters}
    xname, yname = landscape.shown
    px, py = parameters[xname], parameters[yname]

    def axis_values(p: dict[str, Any]) -> np.ndarray:
        if p.get("scale") in ("log", "pow2"):
            return np.geomspace(p["min"], p["max"], 80)
        return np.linspace(p["min"], p["max"], 80)

    gx, gy = axis_values(px), axis_values(py)
    z = np.array([[landscape.function({**landscape.best, xname: x, yname: y}) for x in gx] for y in gy])
    regret = np.maximum(z - landscape.optimum, 1e-4)
    names = list(runs)
    fig = new_figure(4.2 * len(names) + 1.2, 4.4)
    axes = fig.subplots(1, len(names), sharex=True, sharey=True, squeeze=False)[0]
    budget = max(len(group[0].values) for group in runs.values())
    for ax, name in zip(axes, names):
        run = runs[name][0]
        ax.contourf(gx, gy, regret, levels=np.geomspace(regret.min(), regret.max(), 12), norm=LogNorm(),
                    cmap="Greys_r", alpha=0.55)
        xs = [p[xname] for p in run.points]
        ys = [p[yname] for p in run.points]
        dots = ax.scatter(xs, ys, c=range(1, len(xs) + 1), cmap="plasma", vmin=1, vmax=budget, s=36,
                          edgecolors="black", linewidths=0.5, zorder=3)
        best = min(range(len(run.values)), key=run.values.__getitem__)
        ax.scatter([xs[best]], [ys[best]], marker="*", s=260, color="#00c853", edgecolors="black", zorder=4)
        distinct_x = len({round(x, 12) for x in xs})
        ax.set_title(f"{name}: {len(xs)} trials, {distinct_x} distinct {xname}", fontsize="medium")
        ax.set_xlabel(xname + (f" ({px['scale']})" if px.get("scale", "linear") != "linear" else ""))
        for p, axis in ((px, ax.xaxis), (py, ax.yaxis)):
            setter = ax.set_xscale if axis is ax.xaxis else ax.set_yscale
            if p.get("scale") == "log":
                setter("log")
            elif p.get("scale") == "pow2":
                setter("log", base=2)
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 64, not 2^6
                axis.set_minor_locator(NullLocator())
        ax.set_xlim(*_padded(px))
        ax.set_ylim(*_padded(py))
    axes[0].set_ylabel(yname + (f" ({py['scale']})" if py.get("scale", "linear") != "linear" else ""))
    bar = fig.colorbar(dots, ax=list(axes), label="trial number", fraction=0.025, pad=0.02)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle(f"{landscape.name}: where each strategy sampled (seed 0); green star: best found; "
                 "darker background: lower loss",
                 fontsize="medium")
    return fig


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help=f"trials per study (default {DEFAULT_BUDGET})")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"studies per strategy and landscape, seeds 0..SEEDS-1 (default {DEFAULT_SEEDS})")
    parser.add_argument("--landscape", action="append", metavar="NAME",
                        help=f"landscape to run (repeatable; default all: {', '.join(LANDSCAPES)})")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"comma-separated strategies (default {','.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("-o", "--output", type=Path, default=Path("kubetune-runs/simulate"),
                        help="folder for the plots and the table (default kubetune-runs/simulate)")


def check_arguments(args: argparse.Namespace) -> tuple[list[Landscape], list[str]]:
    from kubetune.strategies import STRATEGIES

    if args.budget < 2:
        raise SimulationError(f"--budget must be at least 2, got {args.budget}")
    if args.seeds < 1:
        raise SimulationError(f"--seeds must be at least 1, got {args.seeds}")
    names = args.landscape or list(LANDSCAPES)
    unknown = [n for n in names if n not in LANDSCAPES]
    if unknown:
        raise SimulationError(f"unknown landscape {unknown[0]!r}; choose from {', '.join(LANDSCAPES)}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not strategies:
        raise SimulationError("--strategies names no strategy")
    for s in strategies:
        if s not in STRATEGIES:
            raise SimulationError(f"unknown strategy {s!r}; choose from {', '.join(sorted(STRATEGIES))}")
    if any(s in ("bayesian", "sobol") for s in strategies) and importlib.util.find_spec("torch") is None:
        raise SimulationError("bayesian and sobol need torch (pip install torch), "
                              "or leave them out: --strategies grid,random")
    return [LANDSCAPES[n] for n in dict.fromkeys(names)], list(dict.fromkeys(strategies))


def run_from_args(args: argparse.Namespace) -> int:
    from kubetune.plots import save

    out, err = sys.stdout, sys.stderr

    landscapes, strategies = check_arguments(args)
    output: Path = args.output
    rows, grids, paths = [], {}, []
    for landscape in landscapes:
        began = time.monotonic()
        print(f"kubetune simulate: {landscape.name}: {', '.join(strategies)}, {args.seeds} seeds x "
              f"{args.budget} trials", file=err, flush=True)
        runs = simulate(landscape, strategies, args.budget, args.seeds)
        if "grid" in strategies:
            grids[landscape.name] = grid_resolution(landscape, args.budget)
        rows += summarise(landscape, runs, args.budget)
        paths.append(save(best_so_far_figure(landscape, runs, args.budget), output / f"{landscape.name}-best-so-far.png"))
        paths.append(save(samples_figure(landscape, runs), output / f"{landscape.name}-samples.png"))
        print(f"kubetune simulate: {landscape.name} done in {time.monotonic() - began:.1f}s", file=err, flush=True)
    table = markdown_table(rows, args.budget, grids)
    output.mkdir(parents=True, exist_ok=True)
    command = (f"kubetune simulate --budget {args.budget} --seeds {args.seeds} --strategies {','.join(strategies)} "
               + " ".join(f"--landscape {landscape.name}" for landscape in landscapes))
    (output / "simulate.md").write_text(f"# kubetune simulate\n\n`{command}`\n\n{table}\n")
    paths.append(output / "simulate.md")
    print(table, file=out)
    print("", file=out)
    for path in paths:
        print(path, file=out)
    return 0
