"""Tuning advice: valid studies that go against the practitioner's rules get a pointer to the fix."""

from __future__ import annotations

import sys
import subprocess

import pytest

from kubetune.advice import advise

from conftest import ROOT, make_study, study_manifest, write_manifest

LOG_LR = {"name": "lr", "type": "float", "min": 1e-5, "max": 0.1, "scale": "log"}


def fields(parameters) -> dict[str, str]:
    return {a.field: a.message for a in advise(make_study(parameters))}


def test_a_rate_on_a_linear_scale_over_decades_is_told_to_use_log():
    found = fields([{"name": "lr", "type": "float", "min": 1e-5, "max": 0.1},
                    {"name": "weight_decay", "type": "float", "min": 1e-6, "max": 1e-2}])
    assert set(found) == {"spec.parameters[0].scale", "spec.parameters[1].scale"}
    # 1e-5..0.1 uniformly: (0.1 - 0.01) / (0.1 - 1e-5) of the draws are at or above 0.01.
    assert "lr spans 4 orders of magnitude" in found["spec.parameters[0].scale"]
    assert "90% of the trials land in its top decade" in found["spec.parameters[0].scale"]
    assert "scale: log" in found["spec.parameters[1].scale"] and "regularisation" in found["spec.parameters[1].scale"]


def test_a_learning_rate_from_zero_is_told_to_start_above_it():
    found = fields([{"name": "learning_rate", "type": "float", "min": 0.0, "max": 0.1}])
    assert list(found) == ["spec.parameters[0].min"]
    assert "for example 1e-05" in found["spec.parameters[0].min"]


def test_a_batch_size_over_every_integer_is_told_to_use_pow2():
    found = fields([LOG_LR, {"name": "batch_size", "type": "int", "min": 16, "max": 256}])
    assert list(found) == ["spec.parameters[1].scale"]
    assert "scale: pow2 (16, 32, 64, 128, 256)" in found["spec.parameters[1].scale"]


def test_the_role_decides_not_only_the_name():
    assert fields([{"name": "step_size", "type": "float", "min": 1e-4, "max": 1.0, "role": "learningRate"}])
    assert not fields([{"name": "lr", "type": "float", "min": 1e-4, "max": 1.0, "role": "other"}])


def test_a_grid_over_many_parameters_is_told_to_search_randomly():
    four = [LOG_LR, {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},
            {"name": "width", "type": "int", "min": 16, "max": 256, "scale": "pow2"},
            {"name": "optimizer", "type": "categorical", "values": ["sgd", "adam"]}]
    [advice] = advise(make_study(four, strategy={"name": "grid"}))
    assert advice.field == "spec.strategy.name" and advice.message.startswith("a grid over 4 parameters")
    assert advise(make_study(four[:3], strategy={"name": "grid"})) == []
    assert advise(make_study(four, strategy={"name": "random"})) == []


@pytest.mark.parametrize("parameter", [
    LOG_LR,
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},  # a regularisation rate, rightly linear
    {"name": "lr", "type": "float", "min": 0.01, "max": 0.5},  # under two decades: linear is fine
    {"name": "batch_size", "type": "int", "min": 16, "max": 512, "scale": "pow2"},
    {"name": "batch_size", "type": "int", "min": 33, "max": 60},  # no two powers of two in range
    {"name": "batch_size", "type": "categorical", "values": [32, 48, 64]},
    {"name": "width", "type": "int", "min": 16, "max": 1024},
])
def test_sound_choices_get_no_advice(parameter):
    assert fields([parameter]) == {}


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*/*.yaml")), ids=lambda p: p.parent.name + "/" + p.name)
def test_the_examples_follow_the_advice(example):
    from kubetune.api.validation import load_study_file

    assert advise(load_study_file(str(example))) == []


def test_validate_prints_the_advice_and_still_succeeds(tmp_path):
    path = write_manifest(tmp_path / "study.yaml", study_manifest([{"name": "lr", "type": "float", "min": 1e-5, "max": 0.1}]))
    result = subprocess.run([sys.executable, "-m", "kubetune.cli", "validate", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.splitlines()[1].startswith("advice: spec.parameters[0].scale: lr spans 4 orders of magnitude")
