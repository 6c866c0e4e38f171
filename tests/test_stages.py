"""Staged tuning, the learning-rate range test and lrScaling in the engine (pure: no processes).

A study is driven to its end by `drive`, which plays both bodies: it runs every trial the
engine creates by evaluating a known objective, and feeds range-test trials a synthetic curve.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Callable

import pytest

from kubetune import scaling, stages
from kubetune.api.validation import StudyInvalid, parse_study
from kubetune.engine import plan
from kubetune.trials import Report, TrialRecord

from conftest import make_study, study_manifest

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)

SPACE = [
    {"name": "lr", "type": "float", "min": 1e-5, "max": 1.0, "scale": "log"},
    {"name": "batch_size", "type": "int", "min": 16, "max": 256, "scale": "pow2"},
    {"name": "weight_decay", "type": "float", "min": 1e-6, "max": 1e-2, "scale": "log"},
    {"name": "width", "type": "int", "min": 16, "max": 512, "scale": "log"},
    {"name": "momentum", "type": "float", "min": 0.5, "max": 0.99},
]


def loss_of(parameters: dict) -> float:
    """Best at lr=0.01, batch 64, weight decay 1e-4, width 128, momentum 0.9."""
    return (math.log10(parameters["lr"] / 0.01) ** 2 + math.log2(parameters["batch_size"] / 64) ** 2 / 4
            + math.log10(parameters.get("weight_decay", 1e-4) / 1e-4) ** 2 / 8
            + math.log2(parameters.get("width", 128) / 128) ** 2 / 16 + (parameters.get("momentum", 0.9) - 0.9) ** 2)


def range_curve(best_lr: float = 1e-2, points: int = 60) -> tuple[Report, ...]:
    """A range-test curve: flat, falling to a minimum at 10 * best_lr, then blowing up."""
    reports = []
    for i in range(points):
        lr = 1e-6 * (1e2 / 1e-6) ** (i / (points - 1))
        x = math.log10(lr / (10 * best_lr))
        loss = 2.3 - 2.0 / (1 + math.exp(-3 * (x + 1.5))) + (8 * x * x if x > 0 else 0)
        reports.append(Report(i, {"lr": lr, "loss": loss}))
        if loss > 4 * min(r.metrics["loss"] for r in reports):
            break
    return tuple(reports)


def drive(study, objective: Callable[[dict], float] = loss_of, curve=range_curve,
          restart_every: bool = False) -> tuple[list[TrialRecord], list]:
    """Run the study to its end; returns the trials and every plan made."""
    trials: list[TrialRecord] = []
    plans = []
    for _ in range(200):
        result = plan(study, trials, NOW)
        plans.append(result)
        if result.finished:
            return trials, plans
        for create in result.creates():
            if create.lr_range_test is not None:
                history = curve()
                record = TrialRecord(create.name, create.index, create.parameters, "Succeeded",
                                     metrics=dict(history[-1].metrics), history=history,
                                     stage=create.stage, range_test=True)
            else:
                record = TrialRecord(create.name, create.index, create.parameters, "Succeeded",
                                     metrics={"loss": objective(create.effective_parameters or create.parameters)},
                                     stage=create.stage)
            trials.append(record)
    raise AssertionError("the study did not finish")


def staged(**spec):
    spec.setdefault("strategy", {"name": "random", "seed": 5})
    return make_study(SPACE, **spec)


def test_priority_preset_orders_stages_by_role_and_splits_the_budget():
    study = staged(stagePreset={"name": "priority", "lrRangeTest": {}}, budget={"maxTrials": 13, "parallelTrials": 2})
    built = stages.stages(study)
    assert [s.name for s in built] == ["lr-range-test", "batch-size", "regularization", "architecture", "other"]
    assert [[p.name for p in s.parameters] for s in built] == [["lr"], ["batch_size"], ["weight_decay"], ["width"], ["momentum"]]
    # One trial for the range test; the other 12 shared evenly.
    assert [stages.budget(study, built, i, spent=i and 1 + 3 * (i - 1)) for i in range(5)] == [1, 3, 3, 3, 3]
    assert built[0].is_range_test and not any(s.is_range_test for s in built[1:])


def test_explicit_roles_override_the_names():
    space = [dict(p) for p in SPACE]
    space[4]["role"] = "regularization"  # momentum tuned with weight decay
    built = stages.stages(make_study(space, stagePreset={"name": "priority"}, budget={"maxTrials": 8}))
    assert [[p.name for p in s.parameters] for s in built] == [["lr"], ["batch_size"], ["weight_decay", "momentum"], ["width"]]


def test_each_stage_fixes_the_earlier_stages_best_and_keeps_later_ones_at_defaults():
    study = staged(stagePreset={"name": "priority"}, budget={"maxTrials": 15, "parallelTrials": 2})
    trials, plans = drive(study)
    status = plans[-1].status
    assert status.phase == "Succeeded"
    assert [(s.name, s.phase, s.trials) for s in status.stages] == [
        ("learning-rate", "Succeeded", 3), ("batch-size", "Succeeded", 3), ("regularization", "Succeeded", 3),
        ("architecture", "Succeeded", 3), ("other", "Succeeded", 3)]
    defaults = stages.defaults(study)
    assert defaults == {"lr": pytest.approx(math.sqrt(1e-5)), "batch_size": 64, "weight_decay": pytest.approx(1e-4),
                        "width": 91, "momentum": pytest.approx(0.745)}
    settled: dict = {}
    earlier: list = []
    kept: list = []
    for stage in status.stages:
        mine = [t for t in trials if t.stage == stage.name]
        assert len(mine) == stage.trials
        for t in mine:
            for name, value in t.parameters.items():
                if name in stage.parameters:
                    continue
                # One change at a time: everything else is an earlier stage's result or a default.
                assert value == settled.get(name, defaults[name]), (stage.name, name)
        best = min(mine, key=lambda t: t.metrics["loss"])
        assert stage.best_trial == best.name
        # A stage's values replace those in use only if its best beats the incumbent: the best
        # earlier trial that ran with the values in use.
        incumbent = min((t for t in earlier if all(t.parameters[k] == v for k, v in stage.fixed.items())),
                        key=lambda t: t.metrics["loss"], default=None)
        if incumbent is None or best.metrics["loss"] < incumbent.metrics["loss"]:
            assert stage.result == {k: best.parameters[k] for k in stage.parameters}
        else:
            assert stage.result == {k: incumbent.parameters[k] for k in stage.parameters}
            assert incumbent.name in stage.message
            kept.append(stage.name)
        settled.update(stage.result)
        earlier += mine
    assert kept  # this seed has a stage that found nothing better: both branches are checked
    assert status.best_trial.name == min(trials, key=lambda t: t.metrics["loss"]).name
    assert status.conditions[2].reason == "StagesCompleted"


def test_budgets_follow_what_earlier_stages_used_and_extra_trials_go_to_the_last_stage():
    study = staged(stages=[
        {"name": "batch", "parameters": ["batch_size"], "strategy": {"name": "grid"}},  # 5 values only
        {"name": "rates", "parameters": ["lr", "weight_decay"]},
        {"name": "rest", "parameters": ["width", "momentum"], "maxTrials": 2},
    ], budget={"maxTrials": 14, "parallelTrials": 3})
    trials, plans = drive(study)
    status = plans[-1].status
    # The grid ran out after 5 of its 6 (= ceil(12 / 2)) trials; the next stage got the one left.
    assert [(s.name, s.trials, s.max_trials) for s in status.stages] == [("batch", 5, 6), ("rates", 7, 7), ("rest", 2, 2)]
    assert len(trials) == 14
    bigger = staged(stages=study.spec.model_dump(by_alias=True)["stages"], budget={"maxTrials": 17, "parallelTrials": 3})
    bigger.spec.stages[2].max_trials = None
    more = plan(bigger, trials, NOW)
    # The finished stages stay closed: all three new trials belong to the last one.
    assert [c.stage for c in more.creates()] == ["rest", "rest", "rest"]


def test_a_stage_starts_only_when_every_trial_of_the_previous_one_has_finished():
    study = staged(stagePreset={"name": "priority"}, budget={"maxTrials": 10, "parallelTrials": 4})
    first = plan(study, [], NOW)
    assert [c.stage for c in first.creates()] == ["learning-rate", "learning-rate"]
    done = TrialRecord(first.creates()[0].name, 0, first.creates()[0].parameters, "Succeeded", {"loss": 1.0},
                       stage="learning-rate")
    running = TrialRecord(first.creates()[1].name, 1, first.creates()[1].parameters, "Running", stage="learning-rate")
    assert plan(study, [done, running], NOW).creates() == []
    finished = TrialRecord(running.name, 1, running.parameters, "Succeeded", {"loss": 0.5}, stage="learning-rate")
    second = plan(study, [done, finished], NOW)
    assert [c.stage for c in second.creates()] == ["batch-size", "batch-size"]
    assert {c.parameters["lr"] for c in second.creates()} == {finished.parameters["lr"]}
    assert second.status.stages[0].phase == "Succeeded" and second.status.stages[1].phase == "Running"


def test_stage_decisions_are_the_same_after_a_restart():
    """Each plan depends only on the spec and the trials: replaying any prefix of a study's
    history (a restarted runner or operator) gives the plan the uninterrupted study made."""
    study = staged(stagePreset={"name": "priority", "lrRangeTest": {}}, budget={"maxTrials": 9, "parallelTrials": 2})
    trials, plans = drive(study)
    created = [c for p in plans for c in p.creates()]
    assert [c.name for c in created] == [t.name for t in trials]
    known: list[TrialRecord] = []
    for result in plans[:-1]:
        again = plan(study, list(known), NOW)
        assert again.creates() == result.creates()
        assert again.status.stages == result.status.stages
        known += [t for t in trials if t.name in {c.name for c in result.creates()}]


def test_the_range_test_picks_the_learning_rate_for_the_stages_after_it():
    study = staged(stagePreset={"name": "priority", "lrRangeTest": {"rule": "divergence"}},
                   budget={"maxTrials": 5, "parallelTrials": 2})
    trials, plans = drive(study)
    status = plans[-1].status
    test = status.lr_range_test
    assert test.trial == trials[0].name and trials[0].range_test
    assert test.rule == "divergence" and test.parameter == "lr"
    # The synthetic curve's minimum is at 0.1: the divergence rule picks a tenth of it, within
    # the curve's resolution.
    assert 0.005 < test.learning_rate < 0.02
    assert 10 <= len(test.curve) <= 100 and test.curve[0].lr < test.curve[-1].lr
    later = [t for t in trials if not t.range_test]
    assert later and {t.parameters["lr"] for t in later} == {test.learning_rate}
    assert status.stages[0].result == {"lr": test.learning_rate}
    # The range test's own loss is not a result.
    assert status.best_trial.name != trials[0].name


def test_the_range_test_trial_gets_the_run_settings_and_defaults_for_the_rest():
    study = staged(stagePreset={"name": "priority", "lrRangeTest": {"minLr": 1e-6, "maxLr": 1.0, "steps": 50}},
                   budget={"maxTrials": 5})
    create = plan(study, [], NOW).creates()[0]
    assert create.lr_range_test.min_lr == 1e-6 and create.lr_range_test.max_lr == 1.0
    assert create.lr_range_test.steps == 50 and create.lr_range_test.beta == 0.98
    assert create.parameters == stages.defaults(study)
    assert create.spec(study).to_wire()["lrRangeTest"] == {"minLr": 1e-6, "maxLr": 1.0, "steps": 50, "beta": 0.98,
                                                           "stopFactor": 4.0}


def test_a_range_test_alone_ends_the_study_with_the_learning_rate():
    study = make_study(SPACE, strategy={"name": "lr-range-test"}, budget={"maxTrials": 3})
    trials, plans = drive(study)
    assert len(trials) == 1
    status = plans[-1].status
    assert status.phase == "Succeeded" and status.conditions[2].reason == "LearningRateFound"
    assert "lr=" in status.conditions[2].message and status.lr_range_test.learning_rate is not None


def test_a_range_test_without_a_usable_curve_says_why_and_keeps_the_default():
    study = staged(stagePreset={"name": "priority", "lrRangeTest": {}}, budget={"maxTrials": 5})
    trials, plans = drive(study, curve=lambda: (Report(0, {"lr": 1e-6, "loss": 2.3}), Report(1, {"lr": 1e-5, "loss": 2.3})))
    test = plans[-1].status.lr_range_test
    assert test.learning_rate is None and "point" in test.message and "default" in test.message
    assert {t.parameters["lr"] for t in trials if not t.range_test} == {stages.defaults(study)["lr"]}
    alone = make_study(SPACE, strategy={"name": "lr-range-test"})
    _, plans = drive(alone, curve=lambda: (Report(0, {"lr": 1e-6, "loss": 2.3}),))
    assert plans[-1].status.phase == "Failed" and plans[-1].status.conditions[0].reason == "NoLearningRate"


def test_range_test_trials_are_never_pruned_nor_compared_with():
    study = staged(stagePreset={"name": "priority", "lrRangeTest": {}}, budget={"maxTrials": 5},
                   earlyStopping={"name": "median", "settings": {"minTrials": 1}})
    create = plan(study, [], NOW).creates()[0]
    # The loss grows 40-fold, far past the divergence guard's 10x: on purpose, in a range test.
    rising = tuple(Report(i, {"lr": 10 ** (i - 6), "loss": 0.1 * 2 ** i}) for i in range(6))
    running = TrialRecord(create.name, 0, create.parameters, "Running", history=rising, stage=create.stage,
                          range_test=True)
    assert plan(study, [running], NOW).stops() == []


# -- lrScaling --------------------------------------------------------------------------


@pytest.mark.parametrize("rule,batch,expected", [("linear", 256, 4.0), ("linear", 32, 0.5), ("sqrt", 256, 2.0),
                                                 ("sqrt", 16, 0.5), ("linear", 64, 1.0)])
def test_scaling_rules(rule, batch, expected):
    assert scaling.factor(rule, batch, 64) == pytest.approx(expected)


def test_trials_run_with_the_scaled_rate_and_the_search_sees_the_raw_one():
    study = make_study(SPACE[:2], strategy={"name": "grid", "settings": {"resolution": 2}},
                       lrScaling={"rule": "linear", "baseBatchSize": 64}, budget={"maxTrials": 10, "parallelTrials": 10})
    creates = plan(study, [], NOW).creates()
    assert {(c.parameters["lr"], c.parameters["batch_size"]) for c in creates} == {
        (1e-5, 16), (1e-5, 256), (1.0, 16), (1.0, 256)}
    for c in creates:
        assert c.effective_parameters["lr"] == pytest.approx(c.parameters["lr"] * c.parameters["batch_size"] / 64)
        assert c.effective_parameters["batch_size"] == c.parameters["batch_size"]
    at_base = scaling.effective_parameters(study, {"lr": 0.1, "batch_size": 64})
    assert at_base is None  # nothing to scale: the trial runs with the raw values


def test_the_range_test_pick_is_converted_back_to_the_base_batch_size():
    space = [dict(SPACE[0]), {**SPACE[1], "default": 256}, SPACE[2]]
    study = make_study(space, strategy={"name": "random", "seed": 1}, stagePreset={"name": "priority", "lrRangeTest": {}},
                       lrScaling={"rule": "linear", "baseBatchSize": 64}, budget={"maxTrials": 5})
    trials, plans = drive(study)
    test = plans[-1].status.lr_range_test
    # The curve (the same whatever the batch size, here) points at about 0.01, measured at batch
    # 256: at the base batch size 64 the linear rule makes that a quarter.
    assert 0.005 < test.learning_rate * 4 < 0.02 and "base batch size" in test.message
    later = [t for t in trials if t.stage == "regularization"]
    assert later and {t.parameters["lr"] for t in later} == {test.learning_rate}


def test_best_trial_reports_raw_and_scaled_values():
    study = make_study(SPACE[:2], strategy={"name": "random", "seed": 2}, lrScaling={"rule": "sqrt", "baseBatchSize": 64},
                       budget={"maxTrials": 4})
    _, plans = drive(study, objective=lambda p: p["lr"])
    best = plans[-1].status.best_trial
    factor = math.sqrt(best.parameters["batch_size"] / 64)
    if factor != 1:
        assert best.effective_parameters["lr"] == pytest.approx(best.parameters["lr"] * factor)


# -- validation -------------------------------------------------------------------------


def invalid(**spec) -> dict[str, str]:
    with pytest.raises(StudyInvalid) as info:
        parse_study(study_manifest(SPACE, **spec))
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize("spec,path,words", [
    ({"stages": [{"name": "a", "parameters": ["lr", "nope"]}]}, "spec.stages[0].parameters", "'nope' is not a parameter"),
    ({"stages": [{"name": "a", "parameters": ["lr"]}, {"name": "b", "parameters": ["lr"]}]},
     "spec.stages[1].parameters", "already tuned by stage 'a'"),
    ({"stages": [{"name": "a", "parameters": ["lr"]}, {"name": "a", "parameters": ["width"]}]},
     "spec.stages[1].name", "appears twice"),
    ({"stages": [{"name": "a", "parameters": ["lr"], "maxTrials": 8}, {"name": "b", "parameters": ["width"]}],
      "budget": {"maxTrials": 8}}, "spec.budget.maxTrials", "need at least 9 trials"),
    ({"stages": [{"name": "a", "parameters": ["lr", "width"], "strategy": {"name": "lr-range-test"}}]},
     "spec.stages[0].parameters", "exactly one parameter"),
    ({"stages": [{"name": "a", "parameters": ["lr"], "strategy": {"name": "bayes"}}]},
     "spec.stages[0].strategy.name", "unknown strategy 'bayes'"),
    ({"stages": [{"name": "a", "parameters": ["lr"], "strategy": {"name": "lr-range-test", "settings": {"rule": "min"}}}]},
     "spec.stages[0].strategy.settings.rule", "unknown rule 'min'"),
    ({"stagePreset": {"name": "priority", "lrRangeTest": {"maxLr": -1}}, "budget": {"maxTrials": 9}},
     "spec.stagePreset.lrRangeTest.maxLr", "0 < minLr < maxLr"),
    ({"stagePreset": {"name": "priority"}, "stages": [{"name": "a", "parameters": ["lr"]}]}, "spec", "not both"),
    ({"lrScaling": {"rule": "linear", "baseBatchSize": 64, "lrParameter": "width"}}, "spec.lrScaling.lrParameter",
     "'width' is not a float parameter"),
    ({"lrScaling": {"rule": "cubic", "baseBatchSize": 64}}, "spec.lrScaling.rule", "linear"),
    ({"strategy": {"name": "lr-range-test", "settings": {"steps": 2}}}, "spec.strategy.settings.steps", "at least 5"),
])
def test_bad_staging_names_the_field_and_the_fix(spec, path, words):
    errors = invalid(**spec)
    assert path in errors, errors
    assert words in errors[path]


def test_a_preset_range_test_needs_a_learning_rate_parameter():
    manifest = study_manifest([{"name": "width", "type": "int", "min": 1, "max": 8}],
                              stagePreset={"name": "priority", "lrRangeTest": {}})
    with pytest.raises(StudyInvalid) as info:
        parse_study(manifest)
    assert [e.path for e in info.value.errors] == ["spec.stagePreset.lrRangeTest.lrParameter"]
    assert "role: learningRate" in info.value.errors[0].message


def test_parameter_defaults_must_lie_in_the_space():
    with pytest.raises(StudyInvalid) as info:
        parse_study(study_manifest([{**SPACE[1], "default": 48}]))
    assert "power of two" in info.value.errors[0].message and info.value.errors[0].path == "spec.parameters[0]"
