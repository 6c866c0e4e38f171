"""The operator's Prometheus reader against a real Prometheus scraping real trial processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kubetune.cluster.prometheus import PrometheusReader, PrometheusUnavailable
from kubetune.local.executor import free_port

from support.waiting import wait_for

TRIAL = textwrap.dedent("""
    import sys
    from kubetune import trial
    x = float(sys.argv[1])
    for step in range(1, 4):
        trial.report(step=step, loss=x / step, val_accuracy=1 - x / (10 * step))
    print("ready", flush=True)
    sys.stdin.readline()
""")


def start_trial(name: str, x: float, port: int, namespace: str = "ml") -> subprocess.Popen:
    env = {**os.environ, "KUBETUNE_STUDY": "quad", "KUBETUNE_TRIAL": name, "KUBETUNE_NAMESPACE": namespace,
           "KUBETUNE_METRICS_PORT": str(port)}
    env.pop("KUBETUNE_TERMINATION_PATH", None)
    child = subprocess.Popen([sys.executable, "-c", TRIAL, str(x)], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "ready"
    return child




def test_reader_returns_what_the_trials_reported_also_after_they_ended(prometheus):
    ports = [free_port() for _ in range(3)]
    trials = [start_trial("quad-0000", 0.5, ports[0]), start_trial("quad-0001", 2.0, ports[1]),
              start_trial("quad-0000", 9.0, ports[2], namespace="other")]  # same names, other namespace
    prometheus.set_targets(ports)
    reader = PrometheusReader(prometheus.url)

    def both_seen():
        found = reader.study_metrics("ml", "quad", 600)
        return found if all(found.get(t) and found[t].step == 3 for t in ("quad-0000", "quad-0001")) else None

    found = wait_for(both_seen, timeout=30, what="both trials' final step in Prometheus")
    assert set(found) == {"quad-0000", "quad-0001"}
    assert found["quad-0000"].metrics == {"loss": pytest.approx(0.5 / 3), "val_accuracy": pytest.approx(1 - 0.5 / 30)}
    assert found["quad-0001"].metrics == {"loss": pytest.approx(2.0 / 3), "val_accuracy": pytest.approx(1 - 2.0 / 30)}

    # The pods end and their series go stale; the reader still gets the last values.
    for child in trials:
        child.communicate("done\n", timeout=30)
    wait_for(lambda: len([r for r in prometheus.query("up") if r["value"][1] == "0"]) == 3,
             timeout=30, what="Prometheus to see the trials gone")
    assert prometheus.query('kubetune_trial_metric{study="quad"}') == []  # stale: a plain query finds nothing
    after = reader.study_metrics("ml", "quad", 600)
    assert after["quad-0000"].metrics["loss"] == pytest.approx(0.5 / 3)
    assert after["quad-0001"].step == 3


def test_an_unreachable_prometheus_is_reported_not_raised_as_a_crash():
    with pytest.raises(PrometheusUnavailable):
        PrometheusReader(f"http://127.0.0.1:{free_port()}", timeout=2).study_metrics("ml", "quad", 600)
