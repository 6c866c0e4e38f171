"""`kubetune simulate`: strategies driven directly on synthetic landscapes."""

from __future__ import annotations

import pytest

from kubetune import simulate
from kubetune.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_random_beats_grid_when_only_one_parameter_matters():
    """The documented point: 16 grid trials over 4 parameters try 2 values of x1 (0 and 1), so the
    grid's best is (0 - 0.37)^2 = 0.137 whatever happens; each random trial misses the better
    interval (0, 0.74) with probability 0.26, all 16 with 0.26^16 (about 4e-10) per seed."""
    landscape = simulate.LANDSCAPES["one-that-matters"]
    runs = simulate.simulate(landscape, ["grid", "random"], budget=16, seeds=5)
    grid_best = [r.best_so_far(16)[-1] for r in runs["grid"]]
    random_best = [r.best_so_far(16)[-1] for r in runs["random"]]
    assert grid_best == [pytest.approx(0.37 ** 2)] * 5
    assert all(r < g for r, g in zip(random_best, grid_best))
    assert len({p["x1"] for p in runs["grid"][0].points}) == 2
    assert len({p["x1"] for p in runs["random"][0].points}) == 16
    rows = {row.strategy: row for row in simulate.summarise(landscape, runs, 16)}
    assert rows["random"].mean_best < rows["grid"].mean_best / 10
    assert rows["grid"].reached == 0 and rows["grid"].median_to_target is None


def test_the_grid_is_the_largest_that_fits_in_the_budget():
    assert simulate.grid_resolution(simulate.LANDSCAPES["one-that-matters"], 16) == (2, 16)
    assert simulate.grid_resolution(simulate.LANDSCAPES["one-that-matters"], 80) == (2, 16)
    assert simulate.grid_resolution(simulate.LANDSCAPES["one-that-matters"], 81) == (3, 81)
    assert simulate.grid_resolution(simulate.LANDSCAPES["branin"], 30) == (5, 25)


def test_every_strategy_spends_the_budget_and_reports_the_best_so_far():
    landscape = simulate.LANDSCAPES["learning-rate"]
    run = simulate.run_strategy("random", landscape, seed=3, budget=12)
    assert len(run.points) == len(run.values) == 12
    curve = run.best_so_far(12)
    assert curve == sorted(curve, reverse=True) and curve[-1] == min(run.values)
    assert all(p["batch_size"] in (16, 32, 64, 128, 256, 512) for p in run.points)
    assert simulate.trials_to_target(run, landscape.target) == next(
        (i + 1 for i, v in enumerate(curve) if v <= landscape.target), None)


def test_simulate_writes_plots_and_a_table(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--budget", "8", "--seeds", "2", "--landscape", "branin",
                 "--strategies", "grid,random,bayesian", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["branin-best-so-far.png", "branin-samples.png", "simulate.md"]
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 5000
    table = [line for line in printed.splitlines() if line.startswith("| branin")]
    assert [line.split("|")[2].strip() for line in table] == ["grid (2 per parameter: 4 points)", "random", "bayesian"]
    assert [line.split("|")[3].strip() for line in table] == ["4", "8", "8"]  # the 2x2 grid ran out after 4 trials
    assert "| branin (target 1) |" in (out / "simulate.md").read_text()


def test_the_figures_have_a_curve_and_a_panel_per_strategy():
    landscape = simulate.LANDSCAPES["one-that-matters"]
    runs = simulate.simulate(landscape, ["grid", "random"], budget=20, seeds=3)
    (ax,) = simulate.best_so_far_figure(landscape, runs, 20).axes
    assert [line.get_label() for line in ax.get_lines()] == ["grid (all 16 points, then flat)", "random", "target"]
    assert ax.get_yscale() == "log" and len(ax.collections) == 2  # an interquartile band per strategy
    fig = simulate.samples_figure(landscape, runs)
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["grid: 16 trials, 2 distinct x1", "random: 20 trials, 20 distinct x1"]
    assert len(fig.axes) == 3  # two panels and the trial-number colour bar


@pytest.mark.parametrize("argv, message", [
    (["--landscape", "everest"], "unknown landscape 'everest'; choose from one-that-matters, branin, learning-rate"),
    (["--strategies", "grid,annealing"], "unknown strategy 'annealing'"),
    (["--budget", "1"], "--budget must be at least 2, got 1"),
    (["--seeds", "0"], "--seeds must be at least 1, got 0"),
])
def test_bad_arguments_are_usage_errors(argv, message, tmp_path, capsys):
    assert main(["simulate", *argv, "-o", str(tmp_path / "sim")]) == 2
    err = capsys.readouterr().err
    assert f"kubetune simulate: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "sim").exists()
