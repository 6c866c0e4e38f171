"""Bad studies get a message naming the field and the fix: exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.validation import StudyInvalid, parse_study
from kubetune.cli import main

from conftest import ROOT, study_manifest, write_manifest

EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


def broken(change) -> dict:
    manifest = study_manifest()
    change(manifest)
    return manifest


def set_param(**fields):
    return lambda m: m["spec"]["parameters"][0].update(fields)


CASES = [
    (set_param(min=2.0), "spec.parameters[0]", "min must be less than max (got min=2.0, max=1.0)"),
    (set_param(scale="log"), "spec.parameters[0]", "scale log needs min > 0 (got min=-1.0)"),
    (set_param(scale="pow2"), "spec.parameters[0]", "pow2"),
    (set_param(type="int", min=16, max=100, scale="pow2"), "spec.parameters[0]",
     "max of a pow2 parameter must be a power of two (got 100; nearest: 128)"),
    (set_param(type="int", min=0.5), "spec.parameters[0]", "whole number"),
    (set_param(type="categorical"), "spec.parameters[0]", "categorical parameter needs values"),
    (set_param(values=[1, 2]), "spec.parameters[0]", "takes min and max, not values"),
    (set_param(scale="log", min=1e-3, step=0.1), "spec.parameters[0]", "step only applies to the linear scale"),
    (set_param(type="floot"), "spec.parameters[0].type", "'float', 'int' or 'categorical'"),
    (set_param(name="learning rate"), "spec.parameters[0].name", "pattern"),
    (lambda m: m["spec"]["parameters"].append({"name": "x", "type": "int", "min": 0, "max": 3}),
     "spec.parameters", "parameter name 'x' appears twice"),
    (lambda m: m["spec"]["budget"].update(maxTrial=3), "spec.budget.maxTrial",
     "unknown field (did you mean maxTrials?)"),
    (lambda m: m["spec"]["budget"].update(parallelTrials=0), "spec.budget.parallelTrials", "greater than or equal to 1"),
    (lambda m: m["spec"]["objective"].update(goal="minimise"), "spec.objective.goal", "'minimize' or 'maximize'"),
    (lambda m: m["spec"].pop("objective"), "spec.objective", "required field is missing"),
    (lambda m: m["spec"].update(strategy={"name": "bayes"}), "spec.strategy.name",
     "unknown strategy 'bayes'; available: auto, bayesian, grid, lr-range-test, random, sobol"),
    (lambda m: m["spec"].update(earlyStopping={"name": "mediam"}), "spec.earlyStopping.name",
     "unknown early-stopping rule 'mediam'; available: asha, hyperband, median"),
    (lambda m: m["spec"].update(earlyStopping={"name": "asha", "settings": {"reductionFactor": 1}}),
     "spec.earlyStopping.settings.reductionFactor", "must be a whole number of at least 2, got 1"),
    (lambda m: m["spec"].update(earlyStopping={"name": "hyperband"}),
     "spec.earlyStopping.settings.maxResource", "hyperband needs maxResource"),
    (lambda m: m["spec"].update(earlyStopping={"name": "median", "settings": {"warmup": 2}}),
     "spec.earlyStopping.settings.warmup", "unknown setting for early-stopping rule median; allowed: warmupSteps"),
    (lambda m: m["spec"].update(earlyStopping={"divergence": {"factor": 1}}),
     "spec.earlyStopping.divergence.factor", "greater than 1"),
    (lambda m: m["metadata"].update(name="My_Study"), "metadata.name", "lowercase letters, digits and '-'"),
    (lambda m: m["metadata"].update(name="s" * 60), "metadata.name", "at most 52 characters"),
    (lambda m: m.update(apiVersion="kubeflow.org/v1beta1"), "apiVersion", "must be kubetune.io/v1alpha1"),
    (lambda m: m["spec"]["trialTemplate"]["template"]["spec"]["containers"][0].update(args=["--x=${params.y}"]),
     "spec.trialTemplate.template.spec.containers[0].args[0]", "unknown placeholder ${params.y} (did you mean ${params.x}?)"),
    (lambda m: m["spec"]["trialTemplate"]["template"]["spec"].update(containers=[]),
     "spec.trialTemplate.template.spec.containers", "at least 1 item"),
]


@pytest.mark.parametrize("change,path,message", CASES)
def test_bad_study_names_field_and_fix(change, path, message):
    with pytest.raises(StudyInvalid) as info:
        parse_study(broken(change))
    matching = [e for e in info.value.errors if e.path == path]
    assert matching, f"no error at {path}: {info.value.errors}"
    assert any(message in e.message for e in matching), matching


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_are_valid(example, capsys):
    assert main(["validate", str(example)]) == 0


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_cli_rejects_a_bad_study_with_exit_2_and_no_traceback(tmp_path):
    path = write_manifest(tmp_path / "bad.yaml", broken(set_param(min=5.0)))
    for command in ("validate", "run"):
        result = run_cli(command, str(path))
        assert result.returncode == 2
        assert "spec.parameters[0]: min must be less than max" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "kubetune-runs").exists()


def test_yaml_syntax_errors_point_at_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: kubetune.io/v1alpha1\nkind: HyperparameterStudy\nspec:\n  budget: {maxTrials: 3\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert "not valid YAML: line 5" in result.stderr and "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    result = run_cli("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the file: No such file or directory" in result.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["crds"]])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: kubetune" in result.stdout
