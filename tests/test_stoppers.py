"""Early-stopping rules: each rule on hand-made curves, then one contract every stopper keeps."""

from __future__ import annotations

import math
import random

import pytest

from kubetune.api.models import Objective
from kubetune.stoppers import STOPPERS, make_stoppers
from kubetune.stoppers.asha import AshaStopper, HyperbandStopper
from kubetune.stoppers.divergence import DivergenceGuard
from kubetune.stoppers.median import MedianStopper
from kubetune.strategies import SettingsError
from kubetune.trials import Report, TrialRecord

from conftest import make_study

LOSS = Objective(metric="val_loss", goal="minimize")
ACCURACY = Objective(metric="val_accuracy", goal="maximize")


def record(index: int, curve: list[float], phase: str = "Running", metric: str = "val_loss", **extra) -> TrialRecord:
    """A trial that reported `curve` at steps 1, 2, ...; `extra` adds other metrics per step."""
    history = tuple(
        Report(step, {metric: value, **{k: v[step - 1] for k, v in extra.items()}})
        for step, value in enumerate(curve, start=1)
    )
    final = dict(history[-1].metrics) if history else {}
    return TrialRecord(f"t-{index:04d}", index, {"x": index}, phase=phase, metrics=final, history=history)


# -- median ---------------------------------------------------------------------------------

def test_median_stops_a_trial_worse_than_the_median_of_completed_trials_at_its_step():
    done = [record(i, curve, "Succeeded") for i, curve in enumerate([[0.9, 0.5, 0.3], [0.8, 0.4, 0.2], [0.7, 0.41, 0.25]])]
    bad = record(3, [1.2, 0.92])
    decision = MedianStopper(LOSS, {"minTrials": 3}).decide(bad, done + [bad])
    assert decision.reason == "EarlyStopped"
    assert decision.message == (
        "median rule at step 2: best val_loss 0.92 is worse than the median 0.41 of 3 completed trials at that step")
    good = record(4, [1.2, 0.40])
    assert MedianStopper(LOSS, {"minTrials": 3}).decide(good, done + [good]) is None


def test_median_uses_the_best_value_so_far_and_respects_warmup_and_min_trials():
    done = [record(i, [0.5, 0.5], "Succeeded") for i in range(3)]
    dipped = record(3, [0.4, 0.6])  # best so far 0.4 beats the median 0.5
    assert MedianStopper(LOSS, {"minTrials": 3}).decide(dipped, done + [dipped]) is None
    bad = record(4, [0.9])
    assert MedianStopper(LOSS, {"minTrials": 3, "warmupSteps": 1}).decide(bad, done + [bad]) is None
    assert MedianStopper(LOSS, {"minTrials": 4}).decide(bad, done + [bad]) is None
    assert MedianStopper(LOSS, {"minTrials": 3}).decide(bad, done + [bad]) is not None


def test_median_follows_a_maximize_goal_and_ignores_running_and_pruned_trials():
    done = [record(i, [0.9, 0.95], "Succeeded", metric="val_accuracy") for i in range(2)]
    others = [record(2, [0.1], "Running", metric="val_accuracy"), record(3, [0.1], "Pruned", metric="val_accuracy")]
    trial = record(4, [0.5], metric="val_accuracy")
    decision = MedianStopper(ACCURACY, {"minTrials": 2}).decide(trial, done + others + [trial])
    assert "best val_accuracy 0.5 is worse than the median 0.9 of 2 completed trials" in decision.message
    assert MedianStopper(ACCURACY, {"minTrials": 3}).decide(trial, done + others + [trial]) is None


# -- asha and hyperband ------------------------------------------------------------------------

def test_asha_rank_and_cut_off():
    asha = AshaStopper(LOSS, {"reductionFactor": 3, "minResource": 1, "maxResource": 9})
    peers = [record(i, [v], "Pruned") for i, v in enumerate([0.5, 0.6, 0.7, 0.8, 0.9])]
    second = record(5, [0.55])  # rank 2 of 6: top 2 continue
    assert asha.decide(second, peers + [second]) is None
    third = record(5, [0.65])  # rank 3 of 6
    decision = asha.decide(third, peers + [third])
    assert decision.message == ("asha rule at rung 0 (step 1): val_loss 0.65 ranks 3 of 6 trials at that rung; "
                                "only the top 2 (1/3, rounded up) continue, the cut-off is 0.6")


def test_asha_keeps_the_top_third_rounded_up_so_a_stop_is_never_stricter_than_asha():
    # ASHA would pause the 2nd of 4 and promote it once the rung grows; a stop cannot be undone,
    # so the top ceil(4/3) = 2 continue (floor(4/3) = 1 would cut it), and the 3rd stops.
    asha = AshaStopper(ACCURACY, {"maxResource": 27})
    peers = [record(i, [v], "Pruned", metric="val_accuracy") for i, v in enumerate([0.9, 0.5, 0.4])]
    second = record(3, [0.6], metric="val_accuracy")
    assert asha.decide(second, peers + [second]) is None
    third = record(3, [0.45], metric="val_accuracy")
    assert asha.decide(third, peers + [third]).message == (
        "asha rule at rung 0 (step 1): val_accuracy 0.45 ranks 3 of 4 trials at that rung; "
        "only the top 2 (1/3, rounded up) continue, the cut-off is 0.5")
    tied = record(3, [0.5], metric="val_accuracy")  # ties with the last place continue
    assert asha.decide(tied, peers + [tied]) is None


@pytest.mark.parametrize("settings, first_rung", [
    ({"maxResource": 27}, 1),                                     # rungs 1, 3, 9
    ({"maxResource": 100}, 4),                                    # rungs 4, 12, 36: not 1, 3, 9, 27, 81
    ({"maxResource": 1000, "reductionFactor": 4}, 16),            # rungs 16, 64, 256
    ({"maxResource": 100, "minResource": 1}, 1),                  # a setting wins
    ({}, 1),                                                      # no maxResource: from step 1
])
def test_asha_first_rung_defaults_to_max_resource_over_eta_cubed(settings, first_rung):
    asha = AshaStopper(LOSS, settings)
    leader = record(0, [0.1] * first_rung, "Succeeded")
    before = record(1, [0.9] * (first_rung - 1))
    assert asha.decide(before, [leader, before]) is None  # not judged before the first rung
    at = record(1, [0.9] * first_rung)
    assert asha.decide(at, [leader, at]).message.startswith(f"asha rule at rung 0 (step {first_rung}):")


def test_asha_first_trial_at_a_rung_continues_and_the_second_must_beat_it():
    asha = AshaStopper(LOSS, {"maxResource": 27})
    first = record(0, [0.5, 0.4, 0.3])
    assert asha.decide(first, [first]) is None
    worse = record(1, [0.6])
    assert asha.decide(worse, [first, worse]) is not None
    better = record(1, [0.45])
    assert asha.decide(better, [first, better]) is None


def test_asha_compares_at_the_highest_rung_reached_and_never_stops_a_complete_trial():
    asha = AshaStopper(LOSS, {"maxResource": 9})  # rungs 1, 3
    leader = record(0, [0.5, 0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], "Succeeded")
    # Better than the leader at step 1, worse at rung 1 (step 3): stopped there.
    trial = record(1, [0.4, 0.35, 0.3, 0.3])
    decision = asha.decide(trial, [leader, trial])
    assert decision.message.startswith("asha rule at rung 1 (step 3): val_loss 0.3 ranks 2 of 2")
    between = record(1, [0.4, 0.35])  # past rung 0, not yet at rung 1
    assert asha.decide(between, [leader, between]) is None
    complete = record(2, [0.9] * 9)
    assert asha.decide(complete, [leader, complete]) is None


def test_asha_uses_the_first_value_at_or_past_a_rung_when_the_rung_step_was_missed():
    asha = AshaStopper(LOSS, {"maxResource": 27})
    sparse = TrialRecord("t-0000", 0, {}, "Succeeded", history=(Report(2, {"val_loss": 0.2}), Report(5, {"val_loss": 0.1})))
    trial = TrialRecord("t-0001", 1, {}, "Running", history=(Report(1, {"val_loss": 0.5}), Report(4, {"val_loss": 0.3})))
    # rung 1 is step 3: the trial's value there is 0.3 (step 4), the leader's 0.1 (step 5).
    assert "rung 1 (step 3): val_loss 0.3 ranks 2 of 2" in asha.decide(trial, [sparse, trial]).message


def test_hyperband_deals_trials_to_brackets_and_compares_within_a_bracket():
    hyperband = HyperbandStopper(LOSS, {"reductionFactor": 3, "minResource": 1, "maxResource": 27})
    cycle = hyperband.cycle
    assert sorted(set(cycle)) == [0, 1, 2, 3]
    assert [cycle.count(b) for b in range(4)] == [27, 12, 6, 4]  # Hyperband's n per bracket
    assert cycle[:4] == [0, 1, 0, 2]
    # Trials 0 and 2 share bracket 0 (rungs 1, 3, 9); trial 1 is in bracket 1 (rungs 3, 9).
    assert hyperband.bracket(0) == hyperband.bracket(2) == 0 and hyperband.bracket(1) == 1
    leader = record(0, [0.1], "Pruned")
    other_bracket = record(1, [0.9, 0.9])  # bracket 1 has no rung at step 2
    assert hyperband.decide(other_bracket, [leader, other_bracket]) is None
    worse = record(2, [0.5])
    assert hyperband.decide(worse, [leader, other_bracket, worse]).message.startswith(
        "hyperband rule (bracket 0) at rung 0 (step 1): val_loss 0.5 ranks 2 of 2")


@pytest.mark.parametrize("cls, settings, key, message", [
    (AshaStopper, {"reductionFactor": 1}, "reductionFactor", "must be a whole number of at least 2, got 1"),
    (AshaStopper, {"minResource": 0.5}, "minResource", "must be a whole number of at least 1"),
    (AshaStopper, {"minResource": 9, "maxResource": 9}, "maxResource", "must be greater than minResource=9, got 9"),
    (HyperbandStopper, {}, "maxResource", "hyperband needs maxResource"),
    (MedianStopper, {"minTrials": 0}, "minTrials", "at least 1"),
    (MedianStopper, {"warmup": 3}, "warmup", "unknown setting for early-stopping rule median; allowed: warmupSteps ("),
    (DivergenceGuard, {"factor": 1.0}, "factor", "must be a number greater than 1, got 1.0"),
    (DivergenceGuard, {"peerFactor": 0.5}, "peerFactor", "must be a number greater than 1, got 0.5"),
    (DivergenceGuard, {"minPeers": 0}, "minPeers", "must be a whole number of at least 1, got 0"),
])
def test_settings_are_checked_with_the_key_named(cls, settings, key, message):
    with pytest.raises(SettingsError) as error:
        cls(LOSS, settings)
    assert error.value.key == key and message in str(error.value)


# -- divergence -------------------------------------------------------------------------------

def test_divergence_guard_stops_nan_and_inf_at_once():
    guard = DivergenceGuard(LOSS, {})
    nan = record(0, [0.9, math.nan])
    assert guard.decide(nan, [nan]).reason == "Diverged"
    assert guard.decide(nan, [nan]).message == "divergence guard at step 2: val_loss is nan"
    inf = record(1, [0.9, 0.8], train_loss=[1.0, math.inf])
    assert guard.decide(inf, [inf]).message == "divergence guard at step 2: train_loss is inf"


def test_divergence_guard_stops_a_loss_that_grows_past_its_factor():
    guard = DivergenceGuard(LOSS, {"factor": 10})
    trial = record(0, [0.9, 0.5, 9.5])
    assert guard.decide(trial, [trial]).message == (
        "divergence guard at step 3: val_loss 9.5 is more than 10x its first value 0.9 (step 1)")
    assert guard.decide(record(1, [0.9, 8.9]), []) is None


def test_divergence_guard_watches_losses_not_a_maximized_objective():
    guard = DivergenceGuard(ACCURACY, {})
    rising = record(0, [0.05, 0.9], metric="val_accuracy")  # accuracy rising 18x is progress
    assert guard.decide(rising, [rising]) is None
    exploding = record(1, [0.1, 0.1], metric="val_accuracy", train_loss=[2.3, 40.0])
    assert "train_loss 40 is more than 10x its first value 2.3" in guard.decide(exploding, [exploding]).message


def peers_at_step_1(values: list[float]) -> list[TrialRecord]:
    """Trials whose first report (step 1) has the given train_loss, then improve."""
    return [record(10 + i, [0.5, 0.6], "Succeeded", metric="val_accuracy", train_loss=[v, v / 2])
            for i, v in enumerate(values)]


def test_divergence_guard_stops_a_first_report_far_above_its_peers():
    guard = DivergenceGuard(ACCURACY, {})
    peers = peers_at_step_1([2.3, 2.29, 1.1, 0.8, 2.31])
    blown = record(0, [0.28], metric="val_accuracy", train_loss=[418.2])  # nothing of its own to compare with
    assert guard.decide(blown, [blown]) is None
    assert guard.decide(blown, peers + [blown]).message == (
        "divergence guard at step 1: train_loss 418.2, its first report, is more than 100x the median 2.29 "
        "of 5 other trials at that step")
    assert guard.decide(blown, peers[:4] + [blown]) is None  # fewer than minPeers (5) trials at that step
    assert DivergenceGuard(ACCURACY, {"minPeers": 4}).decide(blown, peers[:4] + [blown]) is not None


def test_divergence_guard_spares_slow_and_spiky_starters():
    guard = DivergenceGuard(ACCURACY, {})
    fast_peers = peers_at_step_1([0.3, 0.25, 0.4, 0.35, 0.3])
    slow_sgd = record(0, [0.1, 0.2], metric="val_accuracy", train_loss=[2.303, 2.29])  # 7.7x: not diverged
    assert guard.decide(slow_sgd, fast_peers + [slow_sgd]) is None
    # A large-learning-rate Adam run on the reference trainer: 73 after a first-epoch spike, then 95% accuracy.
    spiky_adam = record(1, [0.83, 0.89], metric="val_accuracy", train_loss=[72.6, 0.9])
    assert guard.decide(spiky_adam, peers_at_step_1([2.3, 2.29, 2.3, 1.1, 2.31]) + [spiky_adam]) is None


def test_divergence_guard_compares_first_reports_only_at_the_earliest_step():
    guard = DivergenceGuard(ACCURACY, {})
    peers = [record(10 + i, [0.5] * 22, "Succeeded", metric="val_accuracy",
                    train_loss=[2.3] + [0.006] * 21) for i in range(5)]
    # A slow SGD run first seen at epoch 22 (a 0.5 s scrape missed the rest): 230x the others
    # there, yet not diverged. Later steps are not compared: learners are orders of magnitude apart.
    late = TrialRecord("t-0000", 0, {}, "Running", history=(Report(22, {"val_accuracy": 0.4, "train_loss": 1.405}),))
    assert guard.decide(late, peers + [late]) is None
    blown = TrialRecord("t-0001", 1, {}, "Running", history=(Report(1, {"val_accuracy": 0.1, "train_loss": 418.0}),))
    assert "train_loss 418, its first report, is more than 100x the median 2.3 of 5 other trials" in (
        guard.decide(blown, peers + [blown]).message)
    # Peers seen only from step 3 on say nothing about step 1.
    unseen = [TrialRecord(f"s-{i}", 20 + i, {}, "Running", history=(Report(3, {"train_loss": 0.3}),)) for i in range(5)]
    assert guard.decide(blown, unseen + [blown]) is None


def test_a_trainer_that_exits_after_blowing_up_in_its_first_epoch_ends_as_diverged():
    from kubetune.stoppers import diverged

    study = make_study(objective={"metric": "val_accuracy", "goal": "maximize"})
    exited = record(0, [0.17], "Failed", metric="val_accuracy", train_loss=[725.6])
    assert diverged(study, exited) is None  # alone, its only report looks finite and sane
    assert diverged(study, exited, peers_at_step_1([2.3, 2.29, 1.1, 0.8, 2.31]) + [exited]).reason == "Diverged"


def test_the_guard_is_on_by_default_composes_with_a_rule_and_can_be_disabled():
    assert [s.name for s in make_stoppers(make_study())] == ["divergence"]
    asha = make_study(earlyStopping={"name": "asha", "settings": {"maxResource": 9}, "divergence": {"factor": 4}})
    stoppers = make_stoppers(asha)
    assert [s.name for s in stoppers] == ["divergence", "asha"] and stoppers[0].factor == 4
    off = make_study(earlyStopping={"name": "median", "divergence": {"enabled": False}})
    assert [s.name for s in make_stoppers(off)] == ["median"]
    assert make_stoppers(make_study(earlyStopping={"divergence": {"enabled": False}})) == []


# -- the contract every stopper keeps -----------------------------------------------------------

CONTRACT_SETTINGS = {
    "asha": {"maxResource": 9},
    "hyperband": {"maxResource": 9},
    "median": {"minTrials": 2},
    "divergence": {},
}


def population(seed: int) -> list[TrialRecord]:
    """Finished, pruned and running trials with noisy decreasing curves, some of them diverging."""
    rng = random.Random(seed)
    trials = []
    for index in range(12):
        length = rng.randint(1, 9)
        start = rng.uniform(0.5, 2.0)
        curve = [start / (1 + rng.uniform(0.2, 1.0) * step) for step in range(length)]
        if rng.random() < 0.15:
            curve[-1] = rng.choice([math.nan, math.inf, start * 50])
        phase = rng.choice(["Succeeded", "Succeeded", "Pruned", "Running", "Running", "Failed"])
        trials.append(record(index, curve, phase))
    return trials


ALL_STOPPERS = {**STOPPERS, "divergence": DivergenceGuard}  # the rules and the guard


@pytest.fixture(params=sorted(ALL_STOPPERS))
def stopper(request):
    return ALL_STOPPERS[request.param](LOSS, CONTRACT_SETTINGS[request.param])


def test_contract_settings_cover_every_stopper():
    assert set(CONTRACT_SETTINGS) == set(ALL_STOPPERS)


def test_contract_never_stops_a_trial_without_reports(stopper):
    for seed in range(5):
        trials = population(seed)
        silent = TrialRecord("t-0099", 99, {}, "Running")
        assert stopper.decide(silent, trials + [silent]) is None


def test_contract_is_deterministic_and_independent_of_trial_order(stopper):
    for seed in range(10):
        trials = population(seed)
        first = [stopper.decide(t, trials) for t in trials]
        shuffled = list(trials)
        random.Random(seed).shuffle(shuffled)
        again = ALL_STOPPERS[stopper.name](LOSS, CONTRACT_SETTINGS[stopper.name])  # a restarted process
        assert [again.decide(t, shuffled) for t in trials] == first


def test_contract_decisions_depend_only_on_reported_data(stopper):
    for seed in range(10):
        trials = population(seed)
        renamed = [TrialRecord(t.name, t.index, {"other": "params"}, t.phase, {}, t.history, "R", "M") for t in trials]
        assert [stopper.decide(t, renamed) for t in renamed] == [stopper.decide(t, trials) for t in trials]


def test_contract_decisions_are_explained(stopper):
    decisions = [stopper.decide(t, trials) for seed in range(20) for trials in [population(seed)] for t in trials]
    made = [d for d in decisions if d is not None]
    assert made, f"{stopper.name} never stopped a trial of the test populations"
    for decision in made:
        assert decision.reason in ("EarlyStopped", "Diverged")
        assert decision.message.startswith(("median rule", "asha rule", "hyperband rule", "divergence guard"))


def test_contract_the_engine_never_stops_finished_trials(stopper):
    from kubetune.engine import plan
    from datetime import datetime, timezone

    early = {"divergence": {"enabled": False}} if stopper.name != "divergence" else {}
    if stopper.name != "divergence":
        early.update(name=stopper.name, settings=CONTRACT_SETTINGS[stopper.name])
    study = make_study(objective={"metric": "val_loss"}, earlyStopping=early, strategy={"name": "random"},
                       budget={"maxTrials": 100, "parallelTrials": 12, "maxFailedTrials": 100})
    for seed in range(10):
        trials = population(seed)
        stops = plan(study, trials, datetime(2026, 1, 1, tzinfo=timezone.utc)).stops()
        phases = {t.name: t.phase for t in trials}
        assert all(phases[s.name] == "Running" and s.phase == "Pruned" for s in stops)


# -- the engine -------------------------------------------------------------------------------

NOW = __import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").timezone.utc)


def loss_trial(index: int, curve: list[float], phase: str = "Running") -> TrialRecord:
    return record(index, curve, phase, metric="loss")


def test_engine_prunes_a_diverged_trial_and_fills_its_slot_in_the_same_plan():
    from kubetune.engine import StopTrial, plan

    study = make_study(strategy={"name": "random"}, budget={"maxTrials": 10, "parallelTrials": 2})
    trials = [loss_trial(0, [1.0, 0.5]), loss_trial(1, [1.0, math.nan])]
    result = plan(study, trials, NOW)
    assert result.stops() == [StopTrial("t-0001", "Pruned", "Diverged",
                                        "divergence guard at step 2: loss is nan")]
    assert [c.index for c in result.creates()] == [2]
    assert plan(study, trials, NOW) == result  # a restarted runner or operator decides the same


def test_engine_prunes_with_the_named_rule_and_pruned_trials_use_budget_but_are_never_best():
    from kubetune.engine import plan

    study = make_study(strategy={"name": "random"}, budget={"maxTrials": 4, "parallelTrials": 2},
                       earlyStopping={"name": "median", "settings": {"minTrials": 2}})
    done = [loss_trial(0, [0.9, 0.5, 0.3], "Succeeded"), loss_trial(1, [0.8, 0.4, 0.2], "Succeeded")]
    running = [loss_trial(2, [0.85, 0.3]), loss_trial(3, [1.5, 0.9])]
    result = plan(study, done + running, NOW)
    assert [(s.name, s.phase, s.reason) for s in result.stops()] == [("t-0003", "Pruned", "EarlyStopped")]
    assert result.stops()[0].message == (
        "median rule at step 2: best loss 0.9 is worse than the median 0.45 of 2 completed trials at that step")
    assert result.creates() == []  # the budget of 4 is used: the pruned trial counted
    # A pruned trial's last value may look good (it stopped early); it is never the best trial.
    pruned = loss_trial(3, [0.01], "Pruned")
    finished = plan(study, done + [loss_trial(2, [0.85, 0.3, 0.25], "Succeeded"), pruned], NOW)
    assert finished.finished and finished.status.trials.pruned == 1
    assert finished.status.best_trial.name == "t-0001"


def test_engine_does_not_prune_when_the_study_is_over():
    from kubetune.engine import plan

    study = make_study(objective={"metric": "loss", "target": 0.5}, strategy={"name": "random"})
    trials = [loss_trial(0, [0.4], "Succeeded"), loss_trial(1, [1.0, math.nan])]
    assert [(s.phase, s.reason) for s in plan(study, trials, NOW).stops()] == [("Stopped", "StudySucceeded")]


# -- the local body, end to end -------------------------------------------------------------------

def run_local(path, output):
    import io

    from kubetune.api.validation import load_study_file
    from kubetune.local.runner import Progress, run_study

    study = load_study_file(path)
    stream = io.StringIO()
    result = run_study(study, output, progress=Progress(study, stream=stream, live=False),
                       scrape_interval=0.1, stop_grace=5)
    return result, stream.getvalue()


def trial_docs(output):
    import json

    return {p.parent.name: json.loads(p.read_text()) for p in sorted(output.glob("trials/*/trial.json"))}


def process_gone(pid: float) -> bool:
    import os

    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    return False


def fixed(name, value):
    return {"name": name, "type": "categorical", "values": [value]}


@pytest.mark.timeout(60)
def test_local_median_rule_prunes_a_bad_trial_and_terminates_its_process(quadratic_study, tmp_path):
    path = quadratic_study(
        [{"name": "x", "type": "categorical", "values": [0.3, 0.35, 1.0]},
         fixed("steps", 8), fixed("delay", 0.15), fixed("pid", True)],
        strategy={"name": "grid"}, budget={"maxTrials": 3, "parallelTrials": 1},
        earlyStopping={"name": "median", "settings": {"minTrials": 2}},
    )
    result, log = run_local(path, tmp_path / "out")
    assert result.status.phase == "Succeeded"
    assert result.status.trials.succeeded == 2 and result.status.trials.pruned == 1
    bad = trial_docs(tmp_path / "out")["quad-0002"]["status"]
    assert bad["phase"] == "Pruned" and bad["reason"] == "EarlyStopped"
    assert bad["message"].startswith("median rule at step ")
    assert "is worse than the median 1.00" in bad["message"] and "of 2 completed trials" in bad["message"]
    assert bad["step"] < 8  # it stopped early...
    assert process_gone(bad["metrics"]["pid"])  # ...and its process is gone
    assert result.status.best_trial.name == "quad-0000"
    assert "pruned    quad-0002  EarlyStopped: median rule at step" in log


@pytest.mark.timeout(60)
def test_local_divergence_guard_stops_nan_and_exploding_trials_at_once(quadratic_study, tmp_path):
    path = quadratic_study(
        # The delay lets the 0.1 s scrapes see step 1: the guard compares growth with the first value it saw.
        [{"name": "mode", "type": "categorical", "values": ["ok", "diverge", "nan"]}, fixed("pid", True), fixed("delay", 0.3)],
        strategy={"name": "grid"}, budget={"maxTrials": 3, "parallelTrials": 3},
    )
    result, _ = run_local(path, tmp_path / "out")  # diverged trials sleep for an hour unless stopped
    by_mode = {d["spec"]["parameters"]["mode"]: d["status"] for d in trial_docs(tmp_path / "out").values()}
    assert by_mode["ok"]["phase"] == "Succeeded"
    assert by_mode["nan"]["phase"] == "Pruned" and by_mode["nan"]["reason"] == "Diverged"
    assert by_mode["nan"]["message"] == "divergence guard at step 2: loss is nan"
    assert by_mode["diverge"]["phase"] == "Pruned" and by_mode["diverge"]["reason"] == "Diverged"
    assert by_mode["diverge"]["message"].startswith("divergence guard at step 2: loss ")
    assert "is more than 10x its first value" in by_mode["diverge"]["message"]
    assert all(process_gone(by_mode[m]["metrics"]["pid"]) for m in ("nan", "diverge"))
    assert result.status.phase == "Succeeded" and result.status.trials.pruned == 2


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_reference_trainer_with_a_huge_learning_rate_ends_as_diverged(quadratic_study, tmp_path):
    import shutil

    if shutil.which("kubetune-train", path=str(__import__("pathlib").Path(__import__("sys").executable).parent)) is None:
        pytest.skip("the reference trainer is not installed (pip install 'kubetune[trainer]')")
    path = quadratic_study(
        [fixed("lr", 1.0e4)],
        objective={"metric": "val_loss", "goal": "minimize"},
        budget={"maxTrials": 1, "parallelTrials": 1},
        trialTemplate={"template": {"spec": {"containers": [{
            "name": "trial", "command": ["kubetune-train"],
            "args": ["--lr=${params.lr}", "--optimizer=sgd", "--epochs=5", "--threads=1"]}]}}},
    )
    result, log = run_local(path, tmp_path / "out")
    status = trial_docs(tmp_path / "out")["quad-0000"]["status"]
    # Whoever notices first, the guard (at a scrape) or the trainer (exit 3), the record says Diverged.
    assert status["phase"] == "Pruned" and status["reason"] == "Diverged", status
    assert status["message"].startswith("divergence guard at step 1: ")
    assert result.status.trials.failed == 0 and result.status.phase == "Failed"  # no trial succeeded
    assert "Diverged: divergence guard at step 1" in log


# -- the cluster body: the operator against the emulated API, Prometheus played by the test ------

from test_operator import operator, study as operator_study, jobs, trials as cluster_trials, run_pod, succeed, phase_is, get_study  # noqa: E402,F401


class PlayedPrometheus:
    """What the operator's one query per reconcile returns: each trial's latest metrics and step."""

    latest: dict = {}

    def __init__(self, url: str) -> None:
        pass

    def study_metrics(self, namespace, study, window):
        return dict(PlayedPrometheus.latest)


@pytest.mark.timeout(90)
def test_operator_prunes_with_asha_and_the_guard_deletes_jobs_and_keeps_curves(cluster, operator, monkeypatch):
    from kubetune.cluster.prometheus import TrialMetrics
    from support.waiting import wait_for

    monkeypatch.setattr("kubetune.operator.reconcile.PrometheusReader", PlayedPrometheus)
    PlayedPrometheus.latest = {}
    operator(prometheus_url="http://prometheus.invalid", resync_seconds=0.3)
    cluster.create(operator_study(budget={"maxTrials": 3, "parallelTrials": 3},
                                  earlyStopping={"name": "asha", "settings": {"maxResource": 9}}))
    started = wait_for(lambda: len(jobs(cluster)) == 3 and jobs(cluster), what="3 Jobs")
    PlayedPrometheus.latest = {
        "quad-0000": TrialMetrics({"loss": 0.5}, 1),
        "quad-0001": TrialMetrics({"loss": math.nan}, 1),
        "quad-0002": TrialMetrics({"loss": 0.9}, 1),
    }
    for job in started.values():
        run_pod(cluster, job)

    def phase(name):
        return (cluster_trials(cluster)[name].get("status") or {}).get("phase")

    wait_for(lambda: phase("quad-0001") == "Pruned" and phase("quad-0002") == "Pruned", what="two trials pruned")
    status = {n: t["status"] for n, t in cluster_trials(cluster).items()}
    assert status["quad-0001"]["reason"] == "Diverged"
    assert status["quad-0001"]["message"] == "divergence guard at step 1: loss is nan"
    assert status["quad-0002"]["reason"] == "EarlyStopped"
    # The diverged trial has no finite value at the rung: it does not count there.
    assert status["quad-0002"]["message"].startswith("asha rule at rung 0 (step 1): loss 0.9 ranks 2 of 2")
    wait_for(lambda: set(jobs(cluster)) == {"quad-0000"}, what="the pruned trials' Jobs deleted")
    assert status["quad-0002"]["intermediate"] == [{"step": 1, "metrics": {"loss": 0.9}}]
    # The survivor's curve grows one entry per observed step.
    PlayedPrometheus.latest = {"quad-0000": TrialMetrics({"loss": 0.4}, 2)}
    wait_for(lambda: len(cluster_trials(cluster)["quad-0000"]["status"].get("intermediate", [])) == 2,
             what="step 2 recorded")
    assert cluster_trials(cluster)["quad-0000"]["status"]["intermediate"] == [
        {"step": 1, "metrics": {"loss": 0.5}}, {"step": 2, "metrics": {"loss": 0.4}}]
    succeed(cluster, jobs(cluster)["quad-0000"], {"loss": 0.2}, step=9)
    wait_for(phase_is(cluster, "Succeeded"), what="study Succeeded")
    body = get_study(cluster)
    assert body["status"]["trials"]["pruned"] == 2 and body["status"]["trials"]["succeeded"] == 1
    assert body["status"]["bestTrial"]["name"] == "quad-0000"


def test_intermediate_reports_stay_bounded_and_keep_the_first():
    from kubetune.operator.reconcile import remember

    entries: list = []
    for step in range(1, 1001):
        entries = remember(entries, step, {"loss": 1.0 / step, "bad": math.nan})
        assert len(entries) <= 100
    steps = [e["step"] for e in entries]
    assert steps[0] == 1 and steps[-1] == 1000 and steps == sorted(steps)
    assert entries[-1]["metrics"] == {"loss": 0.001}  # NaN cannot be stored; the live scrape carries it
