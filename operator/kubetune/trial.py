"""The trial SDK: what a training program calls to receive parameters and report metrics.

    from kubetune import trial

    lr = trial.param("lr", 0.01)
    for epoch in range(epochs):
        ...
        trial.report(step=epoch, val_loss=val_loss, val_accuracy=acc)

Values are served on /metrics in the Prometheus format (for the local runner's scrape and
the cluster's Prometheus), and when the program exits the final metrics are written as JSON
to the termination-message path, the record that survives a missed scrape.

Only the standard library and prometheus-client are imported here: training images carry
this module without the rest of kubetune's dependencies.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Gauge, start_http_server

# The environment contract between the runner (local or cluster) and the trial.
ENV_STUDY = "KUBETUNE_STUDY"
ENV_TRIAL = "KUBETUNE_TRIAL"
ENV_NAMESPACE = "KUBETUNE_NAMESPACE"
ENV_PARAMS = "KUBETUNE_PARAMS"
ENV_PARAM_PREFIX = "KUBETUNE_PARAM_"
ENV_METRICS_PORT = "KUBETUNE_METRICS_PORT"
ENV_TERMINATION_PATH = "KUBETUNE_TERMINATION_PATH"
# The local runner serves trials on loopback only; in a pod Prometheus scrapes the pod's IP.
ENV_METRICS_ADDR = "KUBETUNE_METRICS_ADDR"
# Keep serving /metrics this long after the program ends, so that Prometheus scrapes the last
# values of short trials (a pod is discovered and scraped some seconds after it starts).
ENV_METRICS_LINGER = "KUBETUNE_METRICS_LINGER_SECONDS"
# A learning-rate range test: the trial sweeps the learning rate instead of training (a JSON
# object, see lr_range_test()).
ENV_LR_RANGE_TEST = "KUBETUNE_LR_RANGE_TEST"
# The parameters as the strategy drew them, before any rewrite (such as learning-rate scaling).
ENV_RAW_PARAMS = "KUBETUNE_RAW_PARAMS"

DEFAULT_METRICS_PORT = 9464
POD_TERMINATION_PATH = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
POD_TERMINATION_LIMIT = 4096

METRIC_NAME = "kubetune_trial_metric"
STEP_NAME = "kubetune_trial_step"


def params() -> dict[str, Any]:
    """All parameters of this trial, from KUBETUNE_PARAMS (empty outside a trial)."""
    return _json_object(ENV_PARAMS) or {}


def _json_object(variable: str) -> Optional[dict[str, Any]]:
    """The JSON object in an environment variable; None when it is unset or blank."""
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{variable} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{variable} must hold a JSON object, got {type(value).__name__}")
    return value


def param(name: str, default: Any = None) -> Any:
    """One parameter by name: from KUBETUNE_PARAMS, else KUBETUNE_PARAM_<NAME>, else default."""
    values = params()
    if name in values:
        return values[name]
    raw = os.environ.get(env_name(name))
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def env_name(name: str) -> str:
    return ENV_PARAM_PREFIX + "".join(c if c.isalnum() else "_" for c in name.upper())


LR_RANGE_TEST_DEFAULTS: dict[str, float] = {"minLr": 1e-7, "maxLr": 10.0, "steps": 100, "beta": 0.98,
                                             "stopFactor": 4.0}


def lr_range_test() -> Optional[dict[str, Any]]:
    """The learning-rate range test this trial should run, from KUBETUNE_LR_RANGE_TEST, or None.

    A JSON object such as {"minLr": 1e-7, "maxLr": 10, "steps": 100, "beta": 0.98,
    "stopFactor": 4}; missing keys take those defaults. The trial then takes `steps`
    optimizer steps with the learning rate growing exponentially from minLr to maxLr, and
    after each step reports trial.report(step=i, lr=lr_i, loss=smoothed_loss), where
    smoothed_loss is the bias-corrected exponential average of the training loss with
    factor beta. It stops once smoothed_loss exceeds stopFactor times the lowest so far, or
    the loss is not finite. Raises ValueError for bad JSON or values.
    """
    value = _json_object(ENV_LR_RANGE_TEST)
    if value is None:
        return None
    # Other keys are ignored: a newer engine may pass settings that only it uses.
    config: dict[str, Any] = {}
    for key, default in LR_RANGE_TEST_DEFAULTS.items():
        number = value.get(key, default)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ValueError(f"{ENV_LR_RANGE_TEST}: {key} must be a finite number, got {number!r}")
        config[key] = float(number)
    steps = config["steps"]
    if not steps.is_integer():
        raise ValueError(f"{ENV_LR_RANGE_TEST}: steps must be a whole number, got {value['steps']!r}")
    config["steps"] = int(steps)
    checks = [
        (config["minLr"] > 0, f"minLr must be > 0, got {config['minLr']:g}"),
        (config["maxLr"] > config["minLr"], f"maxLr must be > minLr ({config['minLr']:g}), got {config['maxLr']:g}"),
        (config["steps"] >= 5, f"steps must be >= 5, got {config['steps']}"),
        (0 <= config["beta"] < 1, f"beta must be in [0, 1), got {config['beta']:g}"),
        (config["stopFactor"] > 1, f"stopFactor must be > 1, got {config['stopFactor']:g}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{ENV_LR_RANGE_TEST}: {message}")
    return config


class _Reporter:
    """Process-wide state behind report(): the gauges, the HTTP server and the exit hook."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.study = os.environ.get(ENV_STUDY, "")
        self.trial = os.environ.get(ENV_TRIAL, "")
        self.namespace = os.environ.get(ENV_NAMESPACE, "")
        self.registry = CollectorRegistry()
        labels = ("study", "trial", "namespace")
        self.metric = Gauge(METRIC_NAME, "Latest value of a metric reported by a kubetune trial.",
                            labels + ("metric",), registry=self.registry)
        self.step = Gauge(STEP_NAME, "Latest step (for example epoch) reported by a kubetune trial.",
                          labels, registry=self.registry)
        self.latest: dict[str, float] = {}
        self.latest_step: Optional[int] = None
        self.history: list[dict[str, Any]] = []
        self.server_started = False
        self._serve()
        atexit.register(self._at_exit)
        _exit_cleanly_on_sigterm()

    def _serve(self) -> None:
        port = int(os.environ.get(ENV_METRICS_PORT, DEFAULT_METRICS_PORT))
        try:
            start_http_server(port, addr=os.environ.get(ENV_METRICS_ADDR, "0.0.0.0"), registry=self.registry)
            self.server_started = True
        except OSError as exc:
            # Metrics still reach the runner through the termination message.
            print(f"kubetune: cannot serve metrics on port {port}: {exc}", file=sys.stderr)

    def report(self, step: Optional[int], metrics: dict[str, float]) -> None:
        labels = (self.study, self.trial, self.namespace)
        with self.lock:
            for name, value in metrics.items():
                self.metric.labels(*labels, name).set(value)
                self.latest[name] = value
            if step is not None:
                self.step.labels(*labels).set(step)
                self.latest_step = step
            self.history.append({"step": step, "metrics": dict(metrics)})
        shown = " ".join(f"{k}={v:.6g}" for k, v in metrics.items())
        print(f"kubetune: step={step} {shown}", file=sys.stderr, flush=True)

    def termination_message(self, limit: Optional[int]) -> str:
        with self.lock:
            record: dict[str, Any] = {"metrics": dict(self.latest), "step": self.latest_step,
                                      "history": list(self.history)}
        text = json.dumps(record)
        if limit is None or len(text.encode()) <= limit:
            return text
        # Too long for the kubelet: first write the history compactly (7 significant digits,
        # no spaces), then thin it evenly, keeping the first and the last report, so that a
        # long curve (a range test's hundred steps) survives as a coarser curve of the same
        # span. The final metrics keep full precision and must always fit: at the end, the
        # history goes altogether.
        record["history"] = [{"step": h["step"], "metrics": {k: float(f"{v:.7g}") for k, v in h["metrics"].items()}}
                             for h in record["history"]]
        text = json.dumps(record, separators=(",", ":"))
        while len(text.encode()) > limit and record["history"]:
            record["history"] = _decimate(record["history"])
            text = json.dumps(record, separators=(",", ":"))
        return text

    def _at_exit(self) -> None:
        self.write_termination_message()
        linger = float(os.environ.get(ENV_METRICS_LINGER) or 0)
        if linger > 0 and self.server_started:
            time.sleep(linger)  # the server thread keeps answering scrapes meanwhile

    def write_termination_message(self) -> None:
        path = termination_path()
        if path is None or not self.latest:
            return
        in_pod = path == POD_TERMINATION_PATH
        text = self.termination_message(POD_TERMINATION_LIMIT if in_pod else None)
        try:
            if in_pod:  # a file the kubelet mounted: it can only be written in place
                with open(path, "w") as handle:
                    handle.write(text)
            else:  # whole or not at all, for a reader that looks while the program lingers or is killed
                partial = f"{path}.partial"
                with open(partial, "w") as handle:
                    handle.write(text)
                os.replace(partial, path)
        except OSError as exc:
            print(f"kubetune: cannot write final metrics to {path}: {exc}", file=sys.stderr)


def _decimate(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other report, always keeping the first and the last; [] from one report."""
    if len(history) <= 1:
        return []
    if len(history) == 2:
        return history[-1:]
    return history[:-1:2] + history[-1:]


def termination_path() -> Optional[str]:
    path = os.environ.get(ENV_TERMINATION_PATH)
    if path:
        return path
    if os.path.exists(POD_TERMINATION_PATH):
        return POD_TERMINATION_PATH
    return None


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (a stopped trial) into SystemExit so the final metrics still get written."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


_reporter: Optional[_Reporter] = None
_reporter_lock = threading.Lock()


def report(step: Optional[int] = None, **metrics: float) -> None:
    """Report metric values, for example report(step=epoch, val_loss=0.12, val_accuracy=0.97).

    The last reported value of each metric is the trial's final result. NaN and infinite
    values are reported as they are (a diverged run is information, not an error).
    """
    global _reporter
    if not metrics:
        raise ValueError("report() needs at least one metric, for example report(step=1, val_loss=0.5)")
    values: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {name!r} must be a number, got {value!r}") from None
    if step is not None:
        if isinstance(step, bool) or int(step) != step:
            raise TypeError(f"step must be a whole number, got {step!r}")
        step = int(step)
    with _reporter_lock:
        if _reporter is None:
            _reporter = _Reporter()
    _reporter.report(step, values)
