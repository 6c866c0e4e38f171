"""The kind end-to-end check (hack/e2e-kind.sh, `make e2e-kind`), and what of it runs offline.

The full run builds both images, creates a kind cluster, installs Prometheus and the chart and
runs a study: it needs a Docker engine, kind, kubectl and helm, takes about ten minutes, and
runs only when asked (KUBETUNE_E2E_KIND=1). Our CI machines have no Docker engine, so there it
is skipped with the reason; the parts that need no cluster are checked here always.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pytest
import yaml

from kubetune.api.validation import parse_study

from conftest import ROOT

SCRIPT = ROOT / "hack" / "e2e-kind.sh"
TOOLS = ("docker", "kind", "kubectl", "helm")


def load_study_module():
    spec = importlib.util.spec_from_file_location("e2e_study", ROOT / "hack" / "e2e" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_parses_and_the_study_is_a_valid_cpu_variant_of_the_example():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    variant = load_study_module().cpu_variant("kubetune-trial:e2e")
    study = parse_study(variant)
    example = yaml.safe_load((ROOT / "examples" / "digits" / "study.yaml").read_text())
    assert variant["spec"]["parameters"] == example["spec"]["parameters"]
    assert variant["spec"]["objective"] == example["spec"]["objective"]
    container = study.spec.trial_template.primary_container
    assert container.image == "kubetune-trial:e2e" and "nvidia.com/gpu" not in str(variant)
    assert variant["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_the_e2e_prometheus_manifests_are_valid():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for manifest in yaml.safe_load_all((ROOT / "hack" / "e2e" / "prometheus.yaml").read_text()):
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def skip_reason() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"kind end-to-end needs {', '.join(missing)} on PATH (docs/deploy.md)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "kind end-to-end needs a running Docker engine (`docker info` failed)"
    if os.environ.get("KUBETUNE_E2E_KIND") != "1":
        return "kind end-to-end creates a cluster and builds images (~10 min): set KUBETUNE_E2E_KIND=1, or run `make e2e-kind`"
    return None


@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_kind_end_to_end():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    result = subprocess.run([str(SCRIPT), "up"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "kind end-to-end passed" in result.stdout
