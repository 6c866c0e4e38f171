"""The strategy benchmark's smoke run: the harness keeps working (its numbers mean nothing here)."""

from __future__ import annotations

import importlib.util
import json
import sys

from conftest import ROOT


def load_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_strategies", ROOT / "benchmarks" / "bench_strategies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_the_table_and_the_json(tmp_path, capsys):
    bench = load_bench()
    assert bench.main(["--smoke", "--results", str(tmp_path)]) == 0
    table = (tmp_path / "strategies.md").read_text()
    assert "| branin | 1 | bayesian |" in table and "| lr_like | 2 | random |" in table
    assert table in capsys.readouterr().out
    data = json.loads((tmp_path / "strategies.json").read_text())
    rows = {(r["problem"], r["batch"], r["contender"]): r for r in data["rows"]}
    assert {("branin", 1, "bayesian"), ("branin", 2, "grid"), ("lr_like", 1, "random")} <= set(rows)
    # Random search's median first trial is 1 by construction; curves never go up.
    for curve in data["curves"]["branin"]["1"].values():
        assert all(a >= b for a, b in zip(curve, curve[1:]))
    assert len(data["runs"]) == sum(r["seeds"] for r in data["rows"])
    # Grid search over two parameters at resolution 2 has four points; everyone else uses the budget.
    assert {len(run["values"]) for run in data["runs"] if run["contender"] != "grid"} == {8}
    for name in data["plots"]:
        assert (tmp_path / name).stat().st_size > 0
    assert all(len(r["first_hits"]) == r["seeds"] for r in data["rows"])
    # The saved runs are enough to score again: the same table, without running a study.
    assert bench.main(["--rescore", str(tmp_path / "strategies.json"), "--results", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "strategies.md").read_text() == table


def test_scoring_normalises_to_random_search_typical_trial_and_the_optimum():
    bench = load_bench()
    runs = [{"contender": "random", "problem": "branin", "seed": s, "batch": 1, "values": v, "seconds": 0.0}
            for s, v in enumerate([[10.397887, 5.397887], [20.397887, 0.397887], [30.397887, 20.397887]])]
    scored = bench.score(runs, ["branin"], budget=2, draws=0)
    [row] = scored["rows"]
    # Six random trials, median 15.4 -> scale 15: the seeds start at 2/3, 4/3 and 2 and end at 1/3, 0 and 4/3.
    assert abs(scored["curves"]["branin"]["1"]["random"][0] - 4 / 3) < 1e-9
    assert abs(row["regret@2"] - (1 / 3 + 0.0 + 4 / 3) / 3) < 1e-9
    # Half the time two trials reach the level one random trial in 1 - 0.5^(1/2) = 29% reaches:
    # the second best of six (5.4, regret 1/3). Two seeds of three get there, by trial 2.
    assert abs(row["target"] - 1 / 3) < 1e-9 and row["trials_to_target"] == 2
    # A third of the draws reach it, so random search needs ceil(log 0.5 / log(2/3)) = 2 trials.
    assert scored["baselines"]["branin"] == {"draws": 6, "random_needs": 2}


def test_a_synthetic_baseline_adds_random_draws_and_needs_about_the_budget():
    bench = load_bench()
    runs = [{"contender": "random", "problem": "branin", "seed": 0, "batch": 1, "values": [5.0] * 30, "seconds": 0.0}]
    scored = bench.score(runs, ["branin"], budget=30, draws=3000)
    assert scored["baselines"]["branin"]["draws"] == 3030
    # The level is the quantile random search reaches half the time in 30 trials, so it needs about 30.
    assert 25 <= scored["baselines"]["branin"]["random_needs"] <= 35


def test_first_seed_moves_the_seeds_for_a_held_out_check(tmp_path):
    bench = load_bench()
    assert bench.main(["--problems", "branin", "--contenders", "random", "--seeds", "2", "--first-seed", "100",
                       "--budget", "3", "--batches", "1", "--workers", "1", "--latency-repeats", "0",
                       "--results", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "strategies.json").read_text())
    assert sorted(run["seed"] for run in data["runs"]) == [100, 101]
    assert data["settings"]["first_seed"] == 100
    assert "Seeds: 2 (100-101)" in (tmp_path / "strategies.md").read_text()
