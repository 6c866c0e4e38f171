"""The trial SDK as a training program uses it: real processes, real HTTP scrapes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune import trial
from kubetune.local.executor import free_port

from support.waiting import wait_for

REPORTING_PROGRAM = textwrap.dedent("""
    import sys
    from kubetune import trial
    trial.report(step=1, val_loss=0.9, val_accuracy=0.5)
    trial.report(step=2, val_loss=0.4, val_accuracy=0.8)
    print("ready", flush=True)
    sys.stdin.readline()   # hold until the test has scraped
""")


def trial_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "KUBETUNE_STUDY": "digits", "KUBETUNE_TRIAL": "digits-0003", "KUBETUNE_NAMESPACE": "ml",
        "KUBETUNE_METRICS_PORT": str(port), "KUBETUNE_TERMINATION_PATH": str(tmp_path / "termination.json"),
    })
    env.update(extra)
    return env


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("kubetune_trial"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_report_serves_prometheus_metrics_and_writes_final_result(tmp_path):
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", REPORTING_PROGRAM], env=trial_env(tmp_path, port),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        samples = scrape(port)
    finally:
        child.communicate("go\n", timeout=30)
    labels = {"study": "digits", "trial": "digits-0003", "namespace": "ml"}
    assert samples[("kubetune_trial_metric", tuple(sorted({**labels, "metric": "val_loss"}.items())))] == 0.4
    assert samples[("kubetune_trial_metric", tuple(sorted({**labels, "metric": "val_accuracy"}.items())))] == 0.8
    assert samples[("kubetune_trial_step", tuple(sorted(labels.items())))] == 2
    assert child.returncode == 0
    final = json.loads((tmp_path / "termination.json").read_text())
    assert final["metrics"] == {"val_loss": 0.4, "val_accuracy": 0.8}
    assert final["step"] == 2
    assert [h["step"] for h in final["history"]] == [1, 2]


def test_a_stopped_trial_still_writes_its_latest_metrics(tmp_path):
    program = textwrap.dedent("""
        import time
        from kubetune import trial
        trial.report(step=1, loss=2.5)
        print("ready", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", program], env=trial_env(tmp_path, free_port()),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert json.loads((tmp_path / "termination.json").read_text())["metrics"] == {"loss": 2.5}


def test_sdk_needs_only_prometheus_client(tmp_path):
    # Training images carry kubetune.trial without pydantic, yaml or the Kubernetes client.
    program = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"pydantic", "yaml", "kubernetes", "kopf", "torch", "numpy"}:
                    raise ImportError(f"{name} is not available in this image")
        sys.meta_path.insert(0, Block())
        from kubetune import trial
        trial.report(step=0, loss=1.0)
        print(trial.param("lr"))
    """)
    env = trial_env(tmp_path, free_port(), KUBETUNE_PARAMS='{"lr": 0.01}')
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.01"


def test_params_come_from_json_then_per_parameter_variables(monkeypatch):
    monkeypatch.setenv("KUBETUNE_PARAMS", json.dumps({"lr": 0.1, "optimizer": "adam"}))
    monkeypatch.setenv("KUBETUNE_PARAM_BATCH_SIZE", "64")
    monkeypatch.setenv("KUBETUNE_PARAM_ACTIVATION", "relu")
    assert trial.params() == {"lr": 0.1, "optimizer": "adam"}
    assert trial.param("lr") == 0.1
    assert trial.param("batch_size") == 64
    assert trial.param("activation") == "relu"
    assert trial.param("missing", "default") == "default"


def test_bad_params_json_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("KUBETUNE_PARAMS", "{lr: 0.1")
    with pytest.raises(ValueError, match="KUBETUNE_PARAMS is not valid JSON"):
        trial.params()


def test_report_rejects_non_numbers_and_empty_reports():
    with pytest.raises(TypeError, match="metric 'loss' must be a number"):
        trial.report(step=1, loss="low")
    with pytest.raises(ValueError, match="at least one metric"):
        trial.report(step=1)


def test_termination_message_fits_the_kubelet_limit_keeping_final_metrics(monkeypatch):
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(free_port()))
    reporter = trial._Reporter()
    for step in range(500):
        reporter.report(step, {"val_loss": 1.0 / (step + 1), "val_accuracy": step / 500})
    message = reporter.termination_message(trial.POD_TERMINATION_LIMIT)
    assert len(message.encode()) <= trial.POD_TERMINATION_LIMIT
    record = json.loads(message)
    assert record["metrics"] == {"val_loss": 1.0 / 500, "val_accuracy": 499 / 500}
    assert len(json.loads(reporter.termination_message(None))["history"]) == 500
    # The history is thinned evenly over the whole run, not cut to its latest reports.
    steps = [entry["step"] for entry in record["history"]]
    assert steps[0] == 0 and steps[-1] == 499
    assert len(steps) >= 16
    strides = {b - a for a, b in zip(steps, steps[1:-1])}
    assert len(strides) == 1  # evenly spaced, apart from the step to the last report
    assert 0 < steps[-1] - steps[-2] <= strides.pop()


def test_a_range_test_curve_survives_the_kubelet_limit(monkeypatch):
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(free_port()))
    reporter = trial._Reporter()
    for step in range(100):
        lr = 1e-7 * 1e8 ** (step / 99)
        reporter.report(step, {"lr": lr, "loss": 2.3 / (1 + step / 10) + step / 1000, "raw_loss": 2.3 / (1 + step / 7)})
    record = json.loads(reporter.termination_message(trial.POD_TERMINATION_LIMIT))
    history = record["history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == 99
    assert len(history) >= 25
    lrs = [entry["metrics"]["lr"] for entry in history]
    assert lrs == sorted(lrs) and lrs[0] == 1e-7 and lrs[-1] == pytest.approx(10.0)


def test_a_single_huge_report_still_leaves_the_final_metrics(monkeypatch):
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(free_port()))
    reporter = trial._Reporter()
    reporter.report(1, {f"metric_{i}": float(i) for i in range(60)})
    reporter.report(2, {f"metric_{i}": float(i) for i in range(60)})
    record = json.loads(reporter.termination_message(2048))
    assert record["history"] == [] and record["step"] == 2 and len(record["metrics"]) == 60


def test_lr_range_test_is_off_without_the_variable(monkeypatch):
    monkeypatch.delenv("KUBETUNE_LR_RANGE_TEST", raising=False)
    assert trial.lr_range_test() is None
    monkeypatch.setenv("KUBETUNE_LR_RANGE_TEST", " ")
    assert trial.lr_range_test() is None


def test_lr_range_test_fills_in_defaults(monkeypatch):
    monkeypatch.setenv("KUBETUNE_LR_RANGE_TEST", "{}")
    assert trial.lr_range_test() == {"minLr": 1e-7, "maxLr": 10.0, "steps": 100, "beta": 0.98, "stopFactor": 4.0}
    monkeypatch.setenv("KUBETUNE_LR_RANGE_TEST", json.dumps({"minLr": 1e-5, "maxLr": 1, "steps": 50.0}))
    config = trial.lr_range_test()
    assert config == {"minLr": 1e-5, "maxLr": 1.0, "steps": 50, "beta": 0.98, "stopFactor": 4.0}
    assert isinstance(config["steps"], int)
    monkeypatch.setenv("KUBETUNE_LR_RANGE_TEST", json.dumps({"steps": 20, "rule": "valley"}))
    assert trial.lr_range_test()["steps"] == 20  # keys it does not use are ignored


@pytest.mark.parametrize("raw, message", [
    ("{minLr: 1}", "KUBETUNE_LR_RANGE_TEST is not valid JSON"),
    ("[1e-7, 10]", "must hold a JSON object, got list"),
    ('{"minLr": 0}', "minLr must be > 0, got 0"),
    ('{"minLr": 1, "maxLr": 0.5}', r"maxLr must be > minLr \(1\), got 0.5"),
    ('{"steps": 4}', "steps must be >= 5, got 4"),
    ('{"steps": 10.5}', "steps must be a whole number, got 10.5"),
    ('{"beta": 1}', r"beta must be in \[0, 1\), got 1"),
    ('{"stopFactor": 1}', "stopFactor must be > 1, got 1"),
    ('{"maxLr": "10"}', "maxLr must be a finite number, got '10'"),
    ('{"steps": true}', "steps must be a finite number, got True"),
])
def test_bad_lr_range_test_is_a_clear_error(monkeypatch, raw, message):
    monkeypatch.setenv("KUBETUNE_LR_RANGE_TEST", raw)
    with pytest.raises(ValueError, match=message):
        trial.lr_range_test()


def test_metrics_can_outlive_the_program_for_a_last_scrape(tmp_path):
    program = 'from kubetune import trial\ntrial.report(step=1, loss=0.25)\nprint("done", flush=True)\n'
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True,
                             env=trial_env(tmp_path, port, KUBETUNE_METRICS_LINGER_SECONDS="30"))
    try:
        assert child.stdout.readline().strip() == "done"  # the program's last line ran
        # The result is written before lingering, and /metrics still answers.
        wait_for(lambda: (tmp_path / "termination.json").exists(), what="the final result")
        assert child.poll() is None
        assert json.loads((tmp_path / "termination.json").read_text())["metrics"] == {"loss": 0.25}
        samples = scrape(port)
        assert any(name == "kubetune_trial_metric" and value == 0.25 for (name, _), value in samples.items())
    finally:
        child.terminate()
        child.wait(timeout=30)
