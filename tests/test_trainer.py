"""The reference trainer (trial-image/kubetune_trainer): real training runs in subprocesses.

Each run trains a small MLP on scikit-learn's digits on the CPU (a few seconds per run, most of
it importing torch) and reports through the real trial SDK: the final metrics are read back
from the termination-message file, as the local runner does.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from kubetune_trainer import optim, train  # noqa: E402

RUN_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_trainer(tmp_path: Path, *args: str, params: dict | None = None, name: str = "trial",
                range_test: str | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run `python -m kubetune_trainer ARGS`; return the process and the termination record."""
    termination = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    env["KUBETUNE_TERMINATION_PATH"] = str(termination)
    env["KUBETUNE_METRICS_PORT"] = str(free_port())
    if params is not None:
        env["KUBETUNE_PARAMS"] = json.dumps(params)
    if range_test is not None:
        env["KUBETUNE_LR_RANGE_TEST"] = range_test
    proc = subprocess.run([sys.executable, "-m", "kubetune_trainer", *args], env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    record = json.loads(termination.read_text()) if termination.exists() else None
    return proc, record


def test_three_epochs_report_every_epoch(tmp_path):
    proc, record = run_trainer(tmp_path, "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert set(record["metrics"]) == {"train_loss", "val_loss", "val_accuracy"}
    assert record["step"] == 3
    assert [entry["step"] for entry in record["history"]] == [1, 2, 3]
    for entry in record["history"]:
        assert set(entry["metrics"]) == {"train_loss", "val_loss", "val_accuracy"}
        assert all(math.isfinite(v) for v in entry["metrics"].values())
    assert 0.0 <= record["metrics"]["val_accuracy"] <= 1.0
    # The SDK prints one line per report; the trainer adds one start line, nothing per epoch.
    assert proc.stderr.count("kubetune: step=") == 3
    assert "device=cpu" in proc.stderr


def test_sensible_config_learns_digits(tmp_path):
    proc, record = run_trainer(tmp_path, "--lr=0.01", "--optimizer=adam", "--epochs=5")
    assert proc.returncode == 0, proc.stderr
    assert record["metrics"]["val_accuracy"] > 0.9
    history = record["history"]
    assert history[-1]["metrics"]["train_loss"] < history[0]["metrics"]["train_loss"]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    args = ("--epochs=2", "--dropout=0.1", "--lr-schedule=cosine", "--warmup-epochs=0.5")
    _, first = run_trainer(tmp_path, *args, "--seed=3", name="a")
    _, again = run_trainer(tmp_path, *args, "--seed=3", name="b")
    _, other = run_trainer(tmp_path, *args, "--seed=4", name="c")
    _, other_split = run_trainer(tmp_path, *args, "--seed=3", "--split-seed=1", name="d")
    assert first["history"] == again["history"]
    assert first["metrics"] != other["metrics"]
    assert first["metrics"] != other_split["metrics"]


def test_divergence_stops_with_exit_3(tmp_path):
    started = time.monotonic()
    proc, record = run_trainer(tmp_path, "--lr=50", "--optimizer=sgd", "--epochs=50")
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 60
    assert "kubetune-train: training diverged at epoch 1" in proc.stderr
    assert "try a lower learning rate (lr=50)" in proc.stderr
    # The diverged epoch is still reported (NaN is information for the study), then it stops.
    assert record["step"] == 1 and len(record["history"]) == 1
    assert not math.isfinite(record["metrics"]["train_loss"])


def test_params_from_environment_and_flags_override(tmp_path):
    params = {"epochs": 2, "batch-size": 128, "lr": "0.005", "not_a_flag": 1}
    proc, record = run_trainer(tmp_path, params=params, name="env")
    assert proc.returncode == 0, proc.stderr
    assert len(record["history"]) == 2
    assert "batch_size=128" in proc.stderr and "lr=0.005" in proc.stderr
    assert "ignoring parameters it does not know: not_a_flag" in proc.stderr

    proc, record = run_trainer(tmp_path, "--epochs=1", "--batch-size", "256",
                               params={"epochs": 2, "batch_size": 128}, name="flags")
    assert proc.returncode == 0, proc.stderr
    assert len(record["history"]) == 1
    assert "batch_size=256" in proc.stderr


@pytest.mark.parametrize("args, params, flag", [
    (["--lr=-1"], None, "--lr"),
    (["--lr", "fast"], None, "--lr"),
    (["--batch-size=0"], None, "--batch-size"),
    (["--dropout=1"], None, "--dropout"),
    (["--optimizer=rmsprop"], None, "--optimizer"),
    ([], {"batch_size": 0}, "--batch-size"),
    ([], {"epochs": 2.5}, "--epochs"),
])
def test_bad_value_exits_2_naming_the_flag(tmp_path, args, params, flag):
    proc, record = run_trainer(tmp_path, *args, params=params)
    assert proc.returncode == 2
    assert f"argument {flag}" in proc.stderr
    assert record is None  # nothing was trained or reported


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_path_runs_on_cpu(tmp_path, precision):
    # The autocast + GradScaler code that CUDA uses, exercised on the CPU.
    proc, record = run_trainer(tmp_path, "--epochs=2", f"--precision={precision}")
    assert proc.returncode == 0, proc.stderr
    assert f"precision={precision}" in proc.stderr
    assert record["metrics"]["val_accuracy"] > 0.8


def test_range_test_reports_a_growing_learning_rate_instead_of_training(tmp_path):
    config = {"minLr": 1e-4, "maxLr": 0.1, "steps": 40}
    proc, record = run_trainer(tmp_path, "--optimizer=adam", "--lr=5", "--epochs=50", range_test=json.dumps(config))
    assert proc.returncode == 0, proc.stderr
    history = record["history"]
    assert [entry["step"] for entry in history] == list(range(40))  # 40 steps: ~2 passes over the data
    lrs = [entry["metrics"]["lr"] for entry in history]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(0.1)
    assert all(b / a == pytest.approx(1e3 ** (1 / 39)) for a, b in zip(lrs, lrs[1:]))
    for entry in history:
        assert set(entry["metrics"]) == {"lr", "loss", "raw_loss"}
    losses = [entry["metrics"]["loss"] for entry in history]
    assert losses[0] == history[0]["metrics"]["raw_loss"]  # bias-corrected: no pull towards 0
    assert min(losses) < losses[0] - 0.5  # Adam at these rates learns digits quickly
    assert "learning-rate range test" in proc.stderr and "reached maxLr=0.1" in proc.stderr
    assert "val_accuracy" not in record["metrics"]  # no training, no evaluation


def test_range_test_stops_when_the_loss_blows_up(tmp_path):
    proc, record = run_trainer(tmp_path, "--optimizer=sgd", range_test='{"minLr": 1e-3, "maxLr": 1e6, "steps": 60}')
    assert proc.returncode == 0, proc.stderr  # a blow-up is how a range test ends, not a failure
    history = record["history"]
    assert 5 < len(history) < 60
    assert all(math.isfinite(v) for entry in history for v in entry["metrics"].values())
    losses = [entry["metrics"]["loss"] for entry in history]
    ended = proc.stderr.splitlines()[-1]
    assert "learning-rate range test done:" in ended
    if "smoothed loss" in ended:  # stopped by stopFactor: the last point is over 4x the lowest
        assert losses[-1] > 4 * min(losses)
    else:
        assert "loss nan" in ended or "loss inf" in ended


def test_range_test_flag_uses_the_default_range(tmp_path):
    proc, record = run_trainer(tmp_path, "--lr-range-test", "--optimizer=sgd", "--batch-size=256")
    assert proc.returncode == 0, proc.stderr
    assert "minLr=1e-07 maxLr=10 steps=100 beta=0.98 stopFactor=4" in proc.stderr
    assert record["history"][0]["metrics"]["lr"] == pytest.approx(1e-7)
    assert len(record["history"]) <= 100


def test_bad_range_test_setting_exits_2(tmp_path):
    proc, record = run_trainer(tmp_path, range_test='{"minLr": 1, "maxLr": 0.1}')
    assert proc.returncode == 2
    assert "KUBETUNE_LR_RANGE_TEST: maxLr must be > minLr (1), got 0.1" in proc.stderr
    assert record is None


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("kubetune-train")
    if not script.exists():
        pytest.skip("kubetune-train console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "--batch-size" in proc.stdout and "KUBETUNE_PARAMS" in proc.stdout


# ----------------------------------------------------------------------------- in process

def test_main_returns_exit_codes(capsys):
    assert train.main(["--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--lr-range-test" in shown and "ignored in a learning-rate range test" in shown
    assert train.main(["--epochs", "0"]) == 2
    assert "argument --epochs: must be >= 1" in capsys.readouterr().err


def test_resolve_precedence():
    args = train.resolve(["--lr=0.1"], {"lr": 0.5, "batch_size": 16, "warmup-epochs": 1})
    assert args.lr == 0.1 and args.batch_size == 16 and args.warmup_epochs == 1.0
    assert args.epochs == 10 and args.optimizer == "adam" and args.threads is None


def test_resolve_range_test_from_flag_only_when_asked():
    assert train.resolve([], {}).lr_range_test is None
    config = train.resolve(["--lr-range-test"], {}).lr_range_test
    assert config == {"minLr": 1e-7, "maxLr": 10.0, "steps": 100, "beta": 0.98, "stopFactor": 4.0}


def test_range_test_smooths_and_stops_at_the_stop_factor():
    raw = [2.0, 1.0, 0.5, 0.5, 3.0, 50.0, 1.0]
    config = {"minLr": 1e-3, "maxLr": 1.0, "steps": 7, "beta": 0.5, "stopFactor": 4.0}
    reports, lrs = [], []

    def step(batch, lr):
        lrs.append(lr)
        return raw[batch]

    assert train.range_test(config, iter(range(7)), step, lambda **kw: reports.append(kw)) == train.EXIT_OK
    assert lrs == pytest.approx([1e-3 * 1e3 ** (i / 6) for i in range(6)])
    # avg_i = 0.5 avg_{i-1} + 0.5 loss_i; smoothed_i = avg_i / (1 - 0.5 ** (i + 1))
    expected, avg = [], 0.0
    for i, loss in enumerate(raw[:6]):
        avg = 0.5 * avg + 0.5 * loss
        expected.append(avg / (1 - 0.5 ** (i + 1)))
    assert [r["loss"] for r in reports] == pytest.approx(expected)
    assert [r["raw_loss"] for r in reports] == raw[:6]
    # The step whose smoothed loss passes 4x the lowest is reported, and the test ends there.
    assert expected[5] > 4 * min(expected[:5]) and expected[4] <= 4 * min(expected[:4])
    assert [r["step"] for r in reports] == list(range(6))


def test_range_test_does_not_report_a_non_finite_loss():
    config = {"minLr": 1e-3, "maxLr": 1.0, "steps": 10, "beta": 0.9, "stopFactor": 4.0}
    raw = [2.0, 1.5, float("nan"), 1.0]
    reports = []
    train.range_test(config, iter(range(10)), lambda batch, lr: raw[batch], lambda **kw: reports.append(kw))
    assert [r["step"] for r in reports] == [0, 1]


def test_bundled_digits_match_sklearn():
    from sklearn.datasets import load_digits
    features, labels = train.load_digits()
    reference = load_digits()
    assert features.shape == (1797, 64)
    assert (features == reference.data).all() and (labels == reference.target).all()


def test_stratified_split():
    import numpy as np
    _, labels = train.load_digits()
    train_idx, val_idx = train.stratified_split(labels, 0.2, seed=0)
    assert len(val_idx) == 360 and len(train_idx) == 1797 - 360
    assert not set(train_idx) & set(val_idx)
    counts = np.bincount(labels[val_idx], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(counts, 0.2, atol=0.01)
    again = train.stratified_split(labels, 0.2, seed=0)[1]
    other = train.stratified_split(labels, 0.2, seed=1)[1]
    assert (again == val_idx).all() and not (other == val_idx).all()


def test_lr_factor():
    f = train.lr_factor
    assert [f(s, 100, 4, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert f(0, 100, 0, "cosine") == 1.0 and f(99, 100, 0, "cosine") < 0.01
    assert f(10, 100, 0, "step") == 1.0
    assert f(60, 100, 0, "step") == pytest.approx(0.1)
    assert f(80, 100, 0, "step") == pytest.approx(0.01)


@pytest.mark.parametrize("ours, theirs, kwargs", [
    (optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    (optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}),
    (optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-3}),
    (optim.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
])
def test_optimizers_match_torch_optim(ours, theirs, kwargs):
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    a, b = model(), model()
    opt_a, opt_b = ours(a.parameters(), **kwargs), theirs(b.parameters(), **kwargs)
    data = torch.Generator().manual_seed(1)
    for step in range(20):
        x = torch.randn(32, 8, generator=data)
        y = torch.randint(0, 3, (32,), generator=data)
        lr = kwargs["lr"] * (0.5 if step >= 10 else 1.0)  # the trainer sets lr every step
        for opt, net in ((opt_a, a), (opt_b, b)):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
