"""How long one decision round takes as a study grows, side by side with Optuna.

A round is what either tuner does whenever something changes: decide, for each of the
running trials, whether to stop it, and propose the next configuration. For kubetune that is
one `engine.plan` call (the local runner and the operator make one per change); for Optuna it
is `should_prune` for each running trial plus one `ask`, on an in-memory study.

Every study has N finished trials with 10 intermediate reports each and 10 running trials
with 3 reports, random search over 3 parameters, and the median rule or successive halving
(ASHA). Median of 5 rounds.

    make bench-engine            # or: python benchmarks/bench_engine.py --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from kubetune.api.models import HyperparameterStudy
from kubetune.engine import plan
from kubetune.trials import Report, TrialRecord

RESULTS = Path(__file__).resolve().parent / "results"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEPS = 10
RUNNING = 10
PARAMETERS = [
    {"name": "lr", "type": "float", "min": 1e-5, "max": 1.0, "scale": "log"},
    {"name": "batch_size", "type": "int", "min": 16, "max": 256, "scale": "pow2"},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},
]
RULES = {"median": ("median", {}), "asha": ("asha", {"maxResource": STEPS})}


def curve(rng: random.Random) -> list[float]:
    start, rate = rng.uniform(1.0, 3.0), rng.uniform(0.05, 0.5)
    return [start * (1 - rate) ** step + rng.uniform(0, 0.05) for step in range(1, STEPS + 1)]


def kubetune_round(size: int, rule: str, seed: int) -> float:
    name, settings = RULES[rule]
    study = HyperparameterStudy.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterStudy", "metadata": {"name": "bench"},
        "spec": {"objective": {"metric": "loss"}, "parameters": PARAMETERS,
                 "strategy": {"name": "random", "seed": seed},
                 "earlyStopping": {"name": name, "settings": settings},
                 "budget": {"maxTrials": size + RUNNING + 1, "parallelTrials": RUNNING + 1},
                 "trialTemplate": {"template": {"spec": {"containers": [{"name": "t", "command": ["true"]}]}}}},
    })
    rng = random.Random(seed)
    trials = []
    for i in range(size + RUNNING):
        values = curve(rng)
        running = i >= size
        history = tuple(Report(s, {"loss": v}) for s, v in enumerate(values[:3] if running else values, start=1))
        trials.append(TrialRecord(f"bench-{i:05d}", i, {"lr": 0.01, "batch_size": 64, "dropout": 0.1},
                                  "Running" if running else "Succeeded", {"loss": history[-1].metrics["loss"]},
                                  history=history))
    began = time.perf_counter()
    result = plan(study, trials, NOW)
    elapsed = time.perf_counter() - began
    assert result.creates(), "the round must propose a trial"
    return elapsed


def optuna_round(size: int, rule: str, seed: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner() if rule == "median" else optuna.pruners.SuccessiveHalvingPruner()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), pruner=pruner)
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True),
        "batch_size": optuna.distributions.CategoricalDistribution([16, 32, 64, 128, 256]),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    }
    rng = random.Random(seed)
    finished = []
    for _ in range(size):
        values = curve(rng)
        finished.append(optuna.trial.create_trial(
            params={"lr": 0.01, "batch_size": 64, "dropout": 0.1}, distributions=distributions, value=values[-1],
            intermediate_values=dict(enumerate(values, start=1))))
    study.add_trials(finished)
    running = []
    for _ in range(RUNNING):
        trial = study.ask(distributions)
        for step, value in enumerate(curve(rng)[:3], start=1):
            trial.report(value, step)
        running.append(trial)
    began = time.perf_counter()
    for trial in running:
        trial.should_prune()
    study.ask(distributions)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for rule in RULES:
            for tuner, run in (("kubetune", kubetune_round), ("optuna", optuna_round)):
                times = [run(size, rule, seed) for seed in range(args.repeats)]
                rows.append({"trials": size, "rule": rule, "tuner": tuner, "median_ms": statistics.median(times) * 1e3,
                             "max_ms": max(times) * 1e3})
    print(f"One decision round ({RUNNING} running trials: stop or not; then one suggestion), median of {args.repeats}\n")
    print("| finished trials | rule | kubetune `plan` | Optuna `should_prune` x10 + `ask` |")
    print("|---|---|---|---|")
    for size in args.sizes:
        for rule in RULES:
            mine, peer = (next(r for r in rows if r["trials"] == size and r["rule"] == rule and r["tuner"] == t)
                          for t in ("kubetune", "optuna"))
            print(f"| {size:,} | {rule} | {mine['median_ms']:.1f} ms | {peer['median_ms']:.1f} ms |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps({"running_trials": RUNNING, "steps": STEPS, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'engine.json'}")


if __name__ == "__main__":
    main()
