from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.models import HyperparameterStudy

# Fixtures: `cluster` (an emulated API server) and `prometheus` (a real Prometheus server).
pytest_plugins = ["support.emulator", "support.prometheus"]

ROOT = Path(__file__).resolve().parent.parent
QUADRATIC = str(ROOT / "tests" / "trials" / "quadratic.py")


def study_manifest(parameters: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    """A small valid study manifest; keyword arguments replace spec fields."""
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "HyperparameterStudy",
        "metadata": {"name": "quad"},
        "spec": {
            "objective": {"metric": "loss", "goal": "minimize"},
            "parameters": parameters or [{"name": "x", "type": "float", "min": -1.0, "max": 1.0}],
            "budget": {"maxTrials": 4, "parallelTrials": 2},
            "trialTemplate": {
                "template": {"spec": {"containers": [{"name": "trial", "command": [sys.executable, QUADRATIC]}]}}
            },
        },
    }
    manifest["spec"].update(copy.deepcopy(spec))
    return manifest


def make_study(parameters: list[dict[str, Any]] | None = None, **spec: Any) -> HyperparameterStudy:
    return HyperparameterStudy.model_validate(study_manifest(parameters, **spec))


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


@pytest.fixture
def quadratic_study(tmp_path: Path):
    def build(parameters=None, **spec) -> Path:
        return write_manifest(tmp_path / "study.yaml", study_manifest(parameters, **spec))

    return build
