"""The local runner with real processes: results, failures, parallelism, GPUs, resume."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.validation import load_study_file
from kubetune.local.executor import LocalSetupError
from kubetune.local.runner import Progress, run_study

from support.waiting import wait_for
from conftest import QUADRATIC, study_manifest, write_manifest


def run(path: Path, output: Path, **kwargs):
    study = load_study_file(path)
    return run_study(study, output, progress=Progress(study, stream=io.StringIO(), live=False),
                     scrape_interval=0.1, stop_grace=5, **kwargs)


def trial_docs(output: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(output.glob("trials/*/trial.json"))}


def condition(status, type_):
    return next(c for c in status.conditions if c.type == type_)




def test_a_study_runs_to_completion_and_records_everything(quadratic_study, tmp_path):
    output = tmp_path / "out"
    result = run(quadratic_study(budget={"maxTrials": 5, "parallelTrials": 2}), output)
    assert result.exit_code == 0
    assert result.status.phase == "Succeeded" and result.status.trials.succeeded == 5
    trials = trial_docs(output)
    assert list(trials) == [f"quad-{i:04d}" for i in range(5)]
    losses = {name: t["status"]["metrics"]["loss"] for name, t in trials.items()}
    for name, doc in trials.items():
        x = doc["spec"]["parameters"]["x"]
        assert losses[name] == pytest.approx((x - 0.3) ** 2 + 1 / 3)
        assert doc["status"]["phase"] == "Succeeded" and doc["status"]["step"] == 3
        history = list(csv.DictReader((output / "trials" / name / "history.csv").open()))
        assert [int(r["step"]) for r in history] == [1, 2, 3]
    best = min(losses, key=losses.get)
    status = json.loads((output / "status.json").read_text())
    assert status["bestTrial"]["name"] == best
    assert status["phase"] == "Succeeded"
    rows = list(csv.DictReader((output / "trials.csv").open()))
    assert [r["trial"] for r in rows] == list(trials) and {r["phase"] for r in rows} == {"Succeeded"}
    assert "metric:x" in rows[0]  # a metric named like a parameter keeps its own column


def test_failures_are_recorded_with_their_reasons(quadratic_study, tmp_path):
    path = quadratic_study(
        [{"name": "mode", "type": "categorical", "values": ["ok", "crash", "silent", "flaky", "hang"]}],
        strategy={"name": "grid"},
        budget={"maxTrials": 5, "parallelTrials": 5, "maxFailedTrials": 5},
        trialTemplate={"retries": 1, "timeoutSeconds": 3, "template": study_manifest()["spec"]["trialTemplate"]["template"]},
    )
    result = run(path, tmp_path / "out")
    by_mode = {t["spec"]["parameters"]["mode"]: t["status"] for t in trial_docs(tmp_path / "out").values()}
    assert by_mode["ok"]["phase"] == "Succeeded"
    assert by_mode["crash"]["phase"] == "Failed" and by_mode["crash"]["reason"] == "Error"
    assert by_mode["crash"]["attempts"] == 2  # retried once with the same parameters
    assert "exit code 1: something went wrong in the trainer" in by_mode["crash"]["message"]
    assert by_mode["silent"]["phase"] == "Failed" and by_mode["silent"]["reason"] == "NoMetrics"
    assert "without reporting loss" in by_mode["silent"]["message"]
    assert by_mode["flaky"]["phase"] == "Succeeded" and by_mode["flaky"]["attempts"] == 2
    assert by_mode["hang"]["phase"] == "Failed" and by_mode["hang"]["reason"] == "DeadlineExceeded"
    assert by_mode["hang"]["metrics"]["loss"] > 0  # what it reported before the deadline is kept
    assert result.status.phase == "Succeeded" and result.status.trials.failed == 3


def test_too_many_failures_fail_the_study_with_exit_code_1(quadratic_study, tmp_path):
    path = quadratic_study(
        [{"name": "mode", "type": "categorical", "values": ["crash"]}],
        budget={"maxTrials": 6, "parallelTrials": 1, "maxFailedTrials": 1},
    )
    result = run(path, tmp_path / "out")
    assert result.exit_code == 1
    assert condition(result.status, "Failed").reason == "TooManyFailedTrials"
    assert result.status.trials.failed == 2 and result.status.trials.total == 2


def test_reaching_the_target_stops_running_trials(quadratic_study, tmp_path):
    # Trial 0 hangs; trial 1 reaches the target at once, so trial 0 is stopped, not waited for.
    path = quadratic_study(
        [{"name": "mode", "type": "categorical", "values": ["hang", "ok"]}],
        strategy={"name": "grid"},
        objective={"metric": "loss", "target": 10.0},
        budget={"maxTrials": 2, "parallelTrials": 2},
    )
    result = run(path, tmp_path / "out")
    assert condition(result.status, "Succeeded").reason == "TargetReached"
    trials = trial_docs(tmp_path / "out")
    assert trials["quad-0000"]["status"]["phase"] == "Stopped"
    assert trials["quad-0000"]["status"]["reason"] == "StudySucceeded"


def test_gpu_trials_get_their_own_device_and_never_share_one(quadratic_study, tmp_path):
    manifest = study_manifest(budget={"maxTrials": 6, "parallelTrials": 4})
    container = manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    manifest["spec"]["parameters"].append({"name": "delay", "type": "float", "min": 0.2, "max": 0.3})
    path = write_manifest(tmp_path / "gpu.yaml", manifest)
    run(path, tmp_path / "out", gpus=["0", "1"])
    spans: dict[float, list[tuple[float, float]]] = {}
    for doc in trial_docs(tmp_path / "out").values():
        metrics = doc["status"]["metrics"]
        spans.setdefault(metrics["gpu"], []).append((metrics["started"], metrics["ended"]))
    assert set(spans) == {0.0, 1.0}
    for intervals in spans.values():
        intervals.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(intervals, intervals[1:]))


def test_asking_for_more_gpus_than_exist_is_a_setup_error(quadratic_study, tmp_path):
    manifest = study_manifest()
    manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2}}
    path = write_manifest(tmp_path / "gpu.yaml", manifest)
    with pytest.raises(LocalSetupError, match="asks for 2 nvidia.com/gpu per trial, but this machine has 1"):
        run(path, tmp_path / "out", gpus=["0"])


def test_suspended_study_runs_nothing(quadratic_study, tmp_path):
    result = run(quadratic_study(suspend=True), tmp_path / "out")
    assert result.status.phase == "Suspended" and result.status.trials.total == 0


def test_resuming_into_a_folder_of_another_search_space_is_refused(quadratic_study, tmp_path):
    run(quadratic_study(budget={"maxTrials": 1}), tmp_path / "out")
    other = quadratic_study([{"name": "x", "type": "float", "min": 0.0, "max": 2.0}])
    result = subprocess.run([sys.executable, "-m", "kubetune.cli", "run", str(other), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "different spec.parameters" in result.stderr and "Traceback" not in result.stderr


def test_resuming_with_other_stages_is_refused_naming_the_field(quadratic_study, tmp_path):
    parameters = [{"name": "x", "type": "float", "min": -1.0, "max": 1.0}, {"name": "y", "type": "float", "min": -1.0, "max": 1.0}]
    stages = [{"name": "first", "parameters": ["x"], "maxTrials": 1}, {"name": "second", "parameters": ["y"]}]
    run(quadratic_study(parameters, stages=stages, budget={"maxTrials": 2}), tmp_path / "out")
    other = quadratic_study(parameters, stages=list(reversed(stages)), budget={"maxTrials": 2})
    result = subprocess.run([sys.executable, "-m", "kubetune.cli", "run", str(other), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "different spec.stages" in result.stderr and "Traceback" not in result.stderr


def test_interrupted_run_keeps_finished_trials_and_resumes(quadratic_study, tmp_path):
    path = quadratic_study(
        [{"name": "x", "type": "float", "min": -1.0, "max": 1.0},
         {"name": "delay", "type": "categorical", "values": [0.3]}],
        budget={"maxTrials": 6, "parallelTrials": 2},
    )
    output = tmp_path / "out"
    command = [sys.executable, "-m", "kubetune.cli", "run", str(path), "-o", str(output), "--scrape-interval", "0.1"]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def succeeded():
        return [n for n, d in trial_docs(output).items() if d.get("status", {}).get("phase") == "Succeeded"]

    try:
        wait_for(lambda: len(succeeded()) >= 2, timeout=60, what="two finished trials")
    finally:
        runner.send_signal(signal.SIGINT)
        _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    assert "Traceback" not in stderr
    before = trial_docs(output)
    finished = {n: d for n, d in before.items() if d["status"]["phase"] == "Succeeded"}
    interrupted = {n: d for n, d in before.items() if d["status"]["phase"] == "Stopped"}
    assert len(finished) >= 2 and interrupted
    assert {d["status"]["reason"] for d in interrupted.values()} == {"Interrupted"}

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = trial_docs(output)
    for name, doc in finished.items():
        assert after[name] == doc  # finished trials are neither rerun nor rewritten
    reruns = {d["spec"]["rerunOf"]: d for d in after.values() if d["spec"].get("rerunOf")}
    assert set(reruns) == set(interrupted)
    for name, doc in reruns.items():
        assert doc["spec"]["parameters"] == interrupted[name]["spec"]["parameters"]
        assert doc["status"]["phase"] == "Succeeded"
    status = json.loads((output / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert status["trials"]["succeeded"] == 6
    # The same study file, run again after it finished, changes nothing.
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and trial_docs(output) == after


def test_a_missing_trial_program_is_reported_before_any_trial_runs(tmp_path):
    manifest = study_manifest()
    manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]["command"] = ["no-such-trainer"]
    path = write_manifest(tmp_path / "study.yaml", manifest)
    result = subprocess.run([sys.executable, "-m", "kubetune.cli", "run", str(path), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot find the trial program 'no-such-trainer'" in result.stderr and "--command" in result.stderr
    assert not list((tmp_path / "out").glob("trials/*"))


def test_command_override_runs_trials_with_a_local_program(tmp_path):
    manifest = study_manifest(budget={"maxTrials": 1})
    container = manifest["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container["command"] = ["/opt/image-only/train"]
    container["args"] = ["--x=${params.x}"]
    path = write_manifest(tmp_path / "study.yaml", manifest)
    study = load_study_file(path)
    result = run_study(study, tmp_path / "out", command=[sys.executable, QUADRATIC],
                       progress=Progress(study, stream=io.StringIO(), live=False))
    assert result.status.phase == "Succeeded"
    log = (tmp_path / "out" / "trials" / "quad-0000" / "output.log").read_text()
    assert f"quadratic.py --x={study_x(tmp_path)}" in log


def study_x(tmp_path: Path) -> str:
    trial = json.loads((tmp_path / "out" / "trials" / "quad-0000" / "trial.json").read_text())
    return repr(trial["spec"]["parameters"]["x"])
