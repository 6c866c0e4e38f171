"""Every example runs for real: the reference PyTorch trainer through `kubetune run`.

Budgets are shrunk so the suite stays fast; everything else is the file users run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune import stages
from kubetune.api.validation import load_study_file

from conftest import ROOT, write_manifest

EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


def kubetune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def shrunk(example: Path, tmp_path: Path, max_trials: int, **changes) -> Path:
    manifest = yaml.safe_load(example.read_text())
    manifest["spec"]["budget"]["maxTrials"] = max_trials
    container = manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container["args"] = [a if not a.startswith("--epochs") else "--epochs=2" for a in container.get("args", [])]
    for key, value in changes.items():
        manifest["spec"][key] = value
    return write_manifest(tmp_path / example.name, manifest)


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_runs_and_resumes_with_a_larger_budget(example, tmp_path):
    output = tmp_path / "out"
    # At least one trial per stage (a study without stages is one).
    budget = max(2, len(stages.stages(load_study_file(example))))
    first = kubetune("run", str(shrunk(example, tmp_path, budget)), "-o", str(output), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "best trial" in first.stdout
    status = json.loads((output / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["trials"]["succeeded"] == budget
    metric = yaml.safe_load(example.read_text())["spec"]["objective"]["metric"]
    assert status["bestTrial"]["objective"] == status["bestTrial"]["metrics"][metric]
    first_trials = {p.parent.name: p.read_text() for p in output.glob("trials/*/trial.json")}

    # Raising maxTrials continues the finished study: one more trial, the first two untouched.
    second = kubetune("run", str(shrunk(example, tmp_path, budget + 1)), "-o", str(output), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"resuming: {budget} trials on record" in second.stderr
    trials = {p.parent.name: p.read_text() for p in output.glob("trials/*/trial.json")}
    assert len(trials) == budget + 1
    assert all(trials[name] == text for name, text in first_trials.items())
    history = (output / "trials" / sorted(trials)[-1] / "history.csv").read_text().splitlines()
    assert history[0] == "step,train_loss,val_accuracy,val_loss" and len(history) == 3  # header + 2 epochs


@pytest.mark.e2e
def test_a_diverging_trial_is_pruned_as_diverged_with_the_trainers_message(tmp_path):
    example = ROOT / "examples" / "digits" / "study.yaml"
    path = shrunk(example, tmp_path, 1, parameters=[
        {"name": "lr", "type": "categorical", "values": [50.0]},
        {"name": "batch_size", "type": "categorical", "values": [64]},
        {"name": "dropout", "type": "categorical", "values": [0.0]},
        {"name": "optimizer", "type": "categorical", "values": ["sgd"]},
    ])
    result = kubetune("run", str(path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1  # the only trial diverged, so no trial succeeded
    trial = json.loads((tmp_path / "out" / "trials" / "digits-0000" / "trial.json").read_text())
    # The divergence guard's verdict (Pruned, not Failed: it does not count towards maxFailedTrials),
    # whether it stopped the trial at a scrape or the trainer exited 3 first.
    assert trial["status"]["phase"] == "Pruned"
    assert trial["status"]["reason"] == "Diverged"
    assert trial["status"]["message"].startswith("divergence guard at step 1: ")
    if "exit code 3" in trial["status"]["message"]:
        assert "exit code 3: kubetune-train: training diverged" in trial["status"]["message"]
    assert "NoSuccessfulTrials" in result.stdout
