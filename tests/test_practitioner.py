"""The practitioner's method end to end on the reference PyTorch trainer, through `kubetune run`:
a learning-rate range test, batch-size learning-rate scaling and staged tuning with the
priority preset (with an interrupted and resumed run). Budgets and epochs are small."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.waiting import wait_for
from conftest import ROOT, write_manifest

STAGED = ROOT / "examples" / "digits" / "staged.yaml"
pytestmark = pytest.mark.e2e


def manifest(**spec) -> dict:
    """The staged example with 1-epoch trials; keyword arguments replace spec fields."""
    data = yaml.safe_load(STAGED.read_text())
    container = data["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container["args"] = [a if not a.startswith("--epochs") else "--epochs=1" for a in container["args"]]
    container["args"].append("--threads=1")
    data["spec"].update(spec)
    return data


def command(path: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "kubetune.cli", "run", str(path), "-o", str(output), "--scrape-interval", "0.2"]


def trial_docs(output: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(output.glob("trials/*/trial.json"))}


def test_a_range_test_alone_finds_a_learning_rate(tmp_path):
    data = manifest(strategy={"name": "lr-range-test", "settings": {"minLr": 1e-6, "maxLr": 10}}, budget={"maxTrials": 1})
    del data["spec"]["stagePreset"], data["spec"]["lrScaling"]
    path = write_manifest(tmp_path / "study.yaml", data)
    result = subprocess.run(command(path, tmp_path / "out"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LearningRateFound" in result.stdout
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    test = status["lrRangeTest"]
    assert test["rule"] == "divergence" and 1e-5 < test["learningRate"] < 1.0
    # The curve the trainer reported: the learning rate grows exponentially, the loss is the smoothed one.
    lrs = [p["lr"] for p in test["curve"]]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6) and len(lrs) >= 20
    trial = trial_docs(tmp_path / "out")["digits-staged-0000"]
    assert trial["spec"]["lrRangeTest"]["maxLr"] == 10 and trial["status"]["phase"] == "Succeeded"
    assert "bestTrial" not in status  # a range test's loss is not a result
    assert f"range test digits-staged-0000: lr={test['learningRate']:.3g}" in result.stdout


def test_trials_with_two_batch_sizes_get_the_learning_rate_scaled_to_their_batch(tmp_path):
    data = manifest(
        parameters=[{"name": "lr", "type": "float", "min": 0.01, "max": 0.1, "scale": "log"},
                    {"name": "batch_size", "type": "categorical", "values": [32, 128]}],
        lrScaling={"rule": "linear", "baseBatchSize": 64},
        strategy={"name": "grid", "settings": {"resolution": 1}}, budget={"maxTrials": 2, "parallelTrials": 2})
    del data["spec"]["stagePreset"]
    container = data["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container["args"] = ["--lr=${params.lr}", "--batch-size=${params.batch_size}", "--epochs=1", "--threads=1"]
    container["env"] = [{"name": "BASE_LR", "value": "${raw.lr}"}]
    path = write_manifest(tmp_path / "study.yaml", data)
    output = tmp_path / "out"
    result = subprocess.run(command(path, output), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    raw = 0.0316227766017  # the grid's one learning rate: the geometric middle of [0.01, 0.1]
    for name, doc in trial_docs(output).items():
        batch = doc["spec"]["parameters"]["batch_size"]
        assert doc["spec"]["parameters"]["lr"] == pytest.approx(raw)
        scaled = doc["spec"]["effectiveParameters"]["lr"]
        assert scaled == pytest.approx(raw * batch / 64)
        # The trainer trained with the scaled rate.
        log = (output / "trials" / name / "output.log").read_text()
        used = float(re.search(r" lr=(\S+) batch_size=(\d+)", log).group(1))
        assert used == pytest.approx(scaled, rel=1e-5)
    rows = list(csv.DictReader((output / "trials.csv").open()))
    assert {(r["batch_size"], round(float(r["scaled:lr"]), 6)) for r in rows} == {
        ("32", round(raw / 2, 6)), ("128", round(raw * 2, 6))}
    best = json.loads((output / "status.json").read_text())["bestTrial"]
    assert best["parameters"]["lr"] == pytest.approx(raw)
    assert best["effectiveParameters"]["lr"] == pytest.approx(raw * best["parameters"]["batch_size"] / 64)
    assert "scaled to" in result.stdout


def test_priority_stages_run_in_order_and_resume_after_an_interruption(tmp_path):
    data = manifest(budget={"maxTrials": 7, "parallelTrials": 1})
    path = write_manifest(tmp_path / "study.yaml", data)
    output = tmp_path / "out"
    runner = subprocess.Popen(command(path, output), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finished():
        return [d for d in trial_docs(output).values() if d.get("status", {}).get("phase") == "Succeeded"]

    try:
        # Interrupt during the batch-size stage: the range test and one batch-size trial are done.
        wait_for(lambda: len(finished()) >= 2, timeout=120, what="two finished trials")
    finally:
        runner.send_signal(signal.SIGINT)
        _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    before = {n: d for n, d in trial_docs(output).items() if d["status"]["phase"] == "Succeeded"}

    resumed = subprocess.run(command(path, output), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    status = json.loads((output / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert [(s["name"], s["phase"]) for s in status["stages"]] == [
        ("lr-range-test", "Succeeded"), ("batch-size", "Succeeded"), ("regularization", "Succeeded"),
        ("architecture", "Succeeded")]
    docs = trial_docs(output)
    for name, doc in before.items():
        assert docs[name] == doc  # finished trials are kept as they were
    ran = [d for d in docs.values() if d["status"]["phase"] == "Succeeded"]
    assert [d["spec"]["stage"] for d in sorted(ran, key=lambda d: d["spec"]["index"])] == [
        "lr-range-test", "batch-size", "batch-size", "regularization", "regularization", "architecture", "architecture"]
    # One change at a time: every trial after the range test uses its pick, and each stage the
    # results of the stages before it.
    picked = status["lrRangeTest"]["learningRate"]
    assert picked is not None
    settled = {}
    for stage in status["stages"]:
        for doc in ran:
            if doc["spec"]["stage"] == stage["name"]:
                for key, value in settled.items():
                    assert doc["spec"]["parameters"][key] == value
                assert {k: v for k, v in doc["spec"]["parameters"].items() if k not in stage["parameters"]} == stage["fixed"]
        settled.update(stage["result"])
    assert settled["lr"] == picked
    assert status["bestTrial"]["parameters"]["lr"] == picked
