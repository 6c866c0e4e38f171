"""The range-test benchmark's smoke run: the harness keeps working (its numbers mean nothing here)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("sklearn")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_lr_range", ROOT / "benchmarks" / "bench_lr_range.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_the_table_and_the_json(tmp_path, capsys):
    from kubetune import lr_range, trial

    report = trial.report
    bench = load_bench()
    assert bench.main(["--smoke", "--results", str(tmp_path)]) == 0
    assert trial.report is report  # the in-process runs put the SDK back as it was
    table = (tmp_path / "lr_range.md").read_text()
    assert table in capsys.readouterr().out
    assert "| adam | random search, 3 trials | 3 |" in table
    for rule in lr_range.RULES:
        assert f"| adam | range test lr range 1e-5..1, {rule}" in table
    data = json.loads((tmp_path / "lr_range.json").read_text())
    rows = {row["approach"]: row for row in data["rows"]}
    search = rows["random search, 3 trials"]
    assert len(search["runs"]) == 1 and search["runs"][0]["epochs"] <= 3
    default = rows[f"range test lr range 1e-5..1, {lr_range.DEFAULT_RULE} (default rule)"]
    [run] = default["runs"]
    # The range test ran its 20 steps over the lr parameter's range, then one 1-epoch training.
    assert 5 <= run["range_test_steps"] <= 20
    assert run["lr"] is not None and 1e-6 <= run["lr"] <= 1.0
    assert run["epochs"] == 1 and 0.0 <= run["val_accuracy"] <= 1.0
    curve = data["curves"]["adam 1e-05..1 seed 0"]
    assert curve[0][0] == pytest.approx(1e-5) and all(b[0] > a[0] for a, b in zip(curve, curve[1:]))


def test_pod_curve_is_what_the_sdk_keeps_under_the_kubelet_limit():
    bench = load_bench()
    reports = [(i, {"lr": 1e-7 * 1e8 ** (i / 99), "loss": 2.3 - i / 100, "raw_loss": 2.3 - i / 90}) for i in range(100)]
    kept = bench.pod_curve(reports)
    assert kept[0][0] == 0 and kept[-1][0] == 99 and 16 <= len(kept) < 100
    assert bench.pod_curve(reports[:10]) == reports[:10]  # short curves fit whole
