"""Engine decisions: a pure function of (study, trials, now), checked case by case."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kubetune.engine import CreateTrial, StopTrial, best_trial, plan
from kubetune.trials import TrialRecord

from conftest import make_study

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def trial(index: int, phase: str = "Succeeded", loss: float | None = None, **kw) -> TrialRecord:
    metrics = {} if loss is None else {"loss": loss}
    return TrialRecord(f"quad-{index:04d}", index, {"x": index / 10}, phase=phase, metrics=metrics, **kw)


def condition(status, type_):
    return next(c for c in status.conditions if c.type == type_)


def test_first_plan_fills_the_parallel_slots():
    result = plan(make_study(budget={"maxTrials": 10, "parallelTrials": 3}), [], NOW)
    assert [a.name for a in result.creates()] == ["quad-0000", "quad-0001", "quad-0002"]
    assert [a.index for a in result.creates()] == [0, 1, 2]
    assert result.status.phase == "Running"
    assert condition(result.status, "Ready").status == "True"


def test_no_new_trial_while_slots_are_full():
    study = make_study(budget={"maxTrials": 10, "parallelTrials": 2})
    assert plan(study, [trial(0, "Running"), trial(1, "Pending")], NOW).actions == ()


def test_a_finished_trial_frees_its_slot_for_the_next_index():
    study = make_study(budget={"maxTrials": 10, "parallelTrials": 2})
    result = plan(study, [trial(0, loss=1.0), trial(1, "Running")], NOW)
    assert result.creates() == [CreateTrial("quad-0002", 2, result.creates()[0].parameters)]


def test_max_trials_is_never_exceeded_and_the_study_ends_when_all_finish():
    study = make_study(budget={"maxTrials": 3, "parallelTrials": 4})
    assert len(plan(study, [], NOW).creates()) == 3
    running = plan(study, [trial(0, loss=1.0), trial(1, loss=2.0), trial(2, "Running")], NOW)
    assert running.actions == () and running.status.phase == "Running"
    done = plan(study, [trial(0, loss=1.0), trial(1, loss=2.0), trial(2, loss=0.5)], NOW)
    assert done.finished and done.status.phase == "Succeeded"
    assert condition(done.status, "Succeeded").reason == "MaxTrialsReached"
    assert done.status.best_trial.name == "quad-0002" and done.status.best_trial.objective == 0.5
    assert done.status.completion_time == "2026-01-01T00:00:00Z"


def test_best_trial_follows_the_goal():
    trials = [trial(0, loss=3.0), trial(1, loss=1.0), trial(2, loss=2.0), trial(3, "Failed", loss=0.1)]
    assert best_trial(make_study(), trials).name == "quad-0001"
    maximize = make_study(objective={"metric": "loss", "goal": "maximize"})
    assert best_trial(maximize, trials).name == "quad-0000"


def test_nan_objectives_and_unfinished_trials_are_never_best():
    trials = [trial(0, loss=float("nan")), trial(1, "Running", loss=0.0), trial(2, "Pruned", loss=0.0), trial(3, loss=5.0)]
    assert best_trial(make_study(), trials).name == "quad-0003"


def test_target_reached_ends_the_study_and_stops_running_trials():
    study = make_study(objective={"metric": "loss", "target": 0.1}, budget={"maxTrials": 10, "parallelTrials": 3})
    result = plan(study, [trial(0, loss=0.05), trial(1, "Running"), trial(2, "Pending")], NOW)
    assert result.status.phase == "Succeeded"
    assert condition(result.status, "Succeeded").reason == "TargetReached"
    assert result.stops() == [
        StopTrial("quad-0001", "Stopped", "StudySucceeded", result.stops()[0].message),
        StopTrial("quad-0002", "Stopped", "StudySucceeded", result.stops()[0].message),
    ]
    assert "quad-0000 reached loss=0.05" in result.stops()[0].message
    assert not result.creates()


def test_target_for_maximize_is_reached_from_above():
    study = make_study(objective={"metric": "loss", "goal": "maximize", "target": 0.9})
    assert plan(study, [trial(0, loss=0.89)], NOW).status.phase == "Running"
    assert plan(study, [trial(0, loss=0.9)], NOW).status.phase == "Succeeded"


def test_too_many_failures_fail_the_study_and_stop_the_rest():
    study = make_study(budget={"maxTrials": 10, "parallelTrials": 2, "maxFailedTrials": 1})
    one_failure = plan(study, [trial(0, "Failed"), trial(1, loss=1.0)], NOW)
    assert one_failure.status.phase == "Running"
    result = plan(study, [trial(0, "Failed"), trial(1, "Failed"), trial(2, "Running")], NOW)
    assert result.status.phase == "Failed"
    assert condition(result.status, "Failed").reason == "TooManyFailedTrials"
    assert condition(result.status, "Ready").status == "False"
    assert [s.name for s in result.stops()] == ["quad-0002"]


def test_a_study_where_nothing_succeeded_fails():
    study = make_study(budget={"maxTrials": 2, "parallelTrials": 1, "maxFailedTrials": 5})
    result = plan(study, [trial(0, "Failed"), trial(1, "Failed")], NOW)
    assert result.status.phase == "Failed"
    assert condition(result.status, "Failed").reason == "NoSuccessfulTrials"


def test_suspend_stops_running_trials_and_resume_reruns_their_parameters():
    study = make_study(budget={"maxTrials": 4, "parallelTrials": 2})
    trials = [trial(0, loss=1.0), trial(1, "Running"), trial(2, "Running")]
    suspended = make_study(budget={"maxTrials": 4, "parallelTrials": 2}, suspend=True)
    result = plan(suspended, trials, NOW)
    assert result.status.phase == "Suspended"
    assert [(s.name, s.phase, s.reason) for s in result.stops()] == [
        ("quad-0001", "Stopped", "StudySuspended"), ("quad-0002", "Stopped", "StudySuspended")]
    stopped = [trials[0], trial(1, "Stopped"), trial(2, "Stopped")]
    assert plan(suspended, stopped, NOW).actions == ()
    resumed = plan(study, stopped, NOW)
    assert [(c.index, c.parameters, c.rerun_of) for c in resumed.creates()] == [
        (3, {"x": 0.1}, "quad-0001"), (4, {"x": 0.2}, "quad-0002")]


def test_stopped_trials_do_not_use_budget():
    study = make_study(budget={"maxTrials": 2, "parallelTrials": 2})
    trials = [trial(0, loss=1.0), trial(1, "Stopped"), trial(2, "Running", rerun_of="quad-0001")]
    result = plan(study, trials, NOW)
    assert result.actions == () and result.status.phase == "Running"
    assert result.status.trials.stopped == 1 and result.status.trials.total == 3


def test_reruns_do_not_shift_the_strategy_sequence():
    # Random search's fourth suggestion is the same whether or not a trial was re-run before it.
    study = make_study(strategy={"name": "random"}, budget={"maxTrials": 10, "parallelTrials": 1})
    plain = [trial(i, loss=1.0) for i in range(3)]
    expected = plan(study, plain, NOW).creates()[0].parameters
    with_rerun = [trial(0, loss=1.0), trial(1, "Stopped"), trial(2, loss=1.0),
                  TrialRecord("quad-0003", 3, {"x": 0.1}, phase="Succeeded", metrics={"loss": 1.0}, rerun_of="quad-0001")]
    assert plan(study, with_rerun, NOW).creates()[0].parameters == expected


def test_grid_exhaustion_ends_the_study():
    study = make_study([{"name": "x", "type": "int", "min": 0, "max": 1}],
                       strategy={"name": "grid"}, budget={"maxTrials": 10, "parallelTrials": 4})
    first = plan(study, [], NOW)
    assert [c.parameters for c in first.creates()] == [{"x": 0}, {"x": 1}]
    done = plan(study, [trial(0, loss=1.0), trial(1, loss=2.0)], NOW)
    assert done.status.phase == "Succeeded"
    assert condition(done.status, "Succeeded").reason == "SearchSpaceExhausted"


def test_raising_max_trials_resumes_a_finished_study():
    trials = [trial(0, loss=1.0), trial(1, loss=2.0)]
    assert plan(make_study(budget={"maxTrials": 2}), trials, NOW).finished
    more = plan(make_study(budget={"maxTrials": 3}), trials, NOW)
    assert [c.index for c in more.creates()] == [2] and more.status.phase == "Running"


def test_planning_is_deterministic():
    study = make_study(budget={"maxTrials": 20, "parallelTrials": 4})
    trials = [trial(0, loss=1.0), trial(1, "Failed"), trial(2, "Running")]
    assert plan(study, trials, NOW) == plan(study, trials, NOW)


def test_condition_transition_times_change_only_with_their_status():
    study = make_study(budget={"maxTrials": 5, "parallelTrials": 1})
    first = plan(study, [], NOW)
    later = plan(study, [trial(0, "Running")], NOW + timedelta(minutes=5), previous=first.status)
    assert condition(later.status, "Running").last_transition_time == "2026-01-01T00:00:00Z"
    done = plan(make_study(budget={"maxTrials": 1}), [trial(0, loss=1.0)], NOW + timedelta(minutes=9), previous=later.status)
    assert condition(done.status, "Running").last_transition_time == "2026-01-01T00:09:00Z"
    assert condition(done.status, "Ready").last_transition_time == "2026-01-01T00:00:00Z"
    assert done.status.start_time == "2026-01-01T00:00:00Z"


def test_status_stays_small_with_many_trials():
    study = make_study(budget={"maxTrials": 20000, "parallelTrials": 8})
    trials = [trial(i, loss=float(i % 97)) for i in range(10000)]
    status = plan(study, trials, NOW).status
    assert len(status.model_dump_json(by_alias=True)) < 4096
    assert status.trials.succeeded == 10000
