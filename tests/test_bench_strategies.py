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


def test_scoring_normalises_to_random_search_first_trial_and_the_optimum():
    bench = load_bench()
    runs = [{"contender": "random", "problem": "branin", "seed": s, "batch": 1, "values": v, "seconds": 0.0}
            for s, v in enumerate([[10.397887, 5.397887], [20.397887, 0.397887], [30.397887, 20.397887]])]
    scored = bench.score(runs, ["branin"], budget=2)
    [row] = scored["rows"]
    # median first value 20.4 -> scale 20: seeds end at 0.25, 0 and 1.
    assert scored["curves"]["branin"]["1"]["random"][0] == (0.5 + 1.0 + 1.5) / 3
    assert abs(row["regret@2"] - (0.25 + 0.0 + 1.0) / 3) < 1e-9
    # The target is random search's median final regret (0.25): two seeds of three reach it, by trial 2.
    assert row["target"] == 0.25 and row["trials_to_target"] == 2


def test_first_seed_moves_the_seeds_for_a_held_out_check(tmp_path):
    bench = load_bench()
    assert bench.main(["--problems", "branin", "--contenders", "random", "--seeds", "2", "--first-seed", "100",
                       "--budget", "3", "--batches", "1", "--workers", "1", "--latency-repeats", "0",
                       "--results", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "strategies.json").read_text())
    assert sorted(run["seed"] for run in data["runs"]) == [100, 101]
    assert data["settings"]["first_seed"] == 100
    assert "Seeds: 2 (100-101)" in (tmp_path / "strategies.md").read_text()
