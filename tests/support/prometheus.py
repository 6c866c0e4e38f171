"""A real Prometheus server (Debian's package) on loopback, for tests that need one.

Targets are given through file_sd files that the test rewrites; Prometheus notices the
change at once (inotify), and scrapes every 500 ms. Two scrape jobs: "kubetune-trials" (trial
processes, their own study/trial/namespace labels kept) and "kubetune-operator" (an operator's
/metrics), as a cluster's Prometheus would have them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from kubetune.local.executor import free_port

SCRAPE_INTERVAL = "500ms"
TRIALS_JOB = "kubetune-trials"
OPERATOR_JOB = "kubetune-operator"


class PrometheusServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = directory / "targets.json"
        self.targets_files = {TRIALS_JOB: self.targets_file, OPERATOR_JOB: directory / "operator-targets.json"}
        for job in self.targets_files:
            self.set_targets([], job=job)
        config = directory / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{
                "job_name": job,
                # The trial's own study/trial/namespace labels win over the target's.
                "honor_labels": job == TRIALS_JOB,
                "file_sd_configs": [{"files": [str(path)], "refresh_interval": "1s"}],
            } for job, path in self.targets_files.items()],
        }))
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.directory / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        """A range query, as a Grafana panel runs it: series with [time, value] ``values``."""
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": start, "end": end, "step": step})
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]

    def set_targets(self, ports: list[int], job: str = TRIALS_JOB) -> None:
        """Scrape exactly these loopback ports in ``job`` (trial processes by default)."""
        path = self.targets_files[job]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{p}" for p in ports]}] if ports else []))
        tmp.replace(path)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    if shutil.which("prometheus") is None:
        pytest.skip("needs the prometheus binary (Debian: apt-get install prometheus; `make test` installs it)")
    server = PrometheusServer(tmp_path / "prometheus")
    try:
        yield server
    finally:
        server.stop()
