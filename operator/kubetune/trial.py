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

DEFAULT_METRICS_PORT = 9464
POD_TERMINATION_PATH = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
POD_TERMINATION_LIMIT = 4096

METRIC_NAME = "kubetune_trial_metric"
STEP_NAME = "kubetune_trial_step"


def params() -> dict[str, Any]:
    """All parameters of this trial, from KUBETUNE_PARAMS (empty outside a trial)."""
    raw = os.environ.get(ENV_PARAMS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_PARAMS} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{ENV_PARAMS} must hold a JSON object, got {type(value).__name__}")
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
        # Drop the oldest history first: the final metrics must always fit.
        while limit is not None and len(text.encode()) > limit and record["history"]:
            record["history"] = record["history"][len(record["history"]) // 2 + 1:]
            text = json.dumps(record)
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
        limit = POD_TERMINATION_LIMIT if path == POD_TERMINATION_PATH else None
        try:
            with open(path, "w") as handle:
                handle.write(self.termination_message(limit))
        except OSError as exc:
            print(f"kubetune: cannot write final metrics to {path}: {exc}", file=sys.stderr)


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
