"""Early stopping on the reference trainer: epochs spent and best validation accuracy reached.

Every method sees the same 30 random configurations per seed (kubetune's random strategy,
seeds 0-4) of the reference trainer (a PyTorch MLP on digits), one trial at a time, each
allowed up to 27 epochs, and stops trials after the epochs it chooses:

  no stopping      every trial runs its 27 epochs (the divergence guard still applies)
  kubetune median  the median rule (minTrials 5, warmupSteps 0)
  kubetune asha    the defaults with maxResource 27: reductionFactor 3, minResource 1
                   (27 / 3^3), rungs at 1, 3, 9 epochs; also with minResource 3 (rungs at
                   3, 9) and with reductionFactor 2
  kubetune hyperband  the defaults with maxResource 27: 4 brackets of ASHA, 1..27, eta 3
  optuna median / sha / hyperband  Optuna's MedianPruner (defaults), SuccessiveHalvingPruner
                   (the same three settings as asha, and its own defaults: min_resource
                   'auto', reduction_factor 4) and HyperbandPruner (1..27, 3)

kubetune's methods are driven through the engine itself (`plan`): it creates the trials from
the study's random strategy and decides, after every epoch report, which trial to prune.
Optuna asks `should_prune` after every report. The objective is val_accuracy, maximized;
the best accuracy is the best final val_accuracy of a trial that was not pruned (a pruned
trial is never the best trial, in kubetune or in Optuna).

Training is deterministic on the CPU, so each configuration is trained once, all 27 epochs,
and every method replays the prefix of its curve it would have run: the epoch counts are
exactly what each method would have consumed. Curves are trained in parallel processes.

    make bench-stopping            # seeds 0-4, ~3 min on 2 cores, nearly all of it training
    python benchmarks/bench_stopping.py --first-seed 5 --output benchmarks/results/stopping-holdout.json --plot ''
    python benchmarks/bench_stopping.py --first-seed 10 --seeds 10 --output benchmarks/results/stopping-holdout-10-19.json --plot ''
    python benchmarks/bench_stopping.py --curves /tmp/curves.json   # keep trained curves for reruns
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs"
MAX_EPOCHS = 27
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)

PARAMETERS = [
    {"name": "lr", "type": "float", "min": 1.0e-4, "max": 1.0, "scale": "log"},
    {"name": "batch_size", "type": "int", "min": 32, "max": 256, "scale": "pow2"},
    {"name": "hidden_width", "type": "int", "min": 16, "max": 128, "scale": "pow2"},
    {"name": "depth", "type": "int", "min": 1, "max": 3},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},
    {"name": "optimizer", "type": "categorical", "values": ["sgd", "adam"]},
]

Curve = list[dict[str, float]]  # one dict of metrics per epoch, from epoch 1


def study(seed: int, trials: int, early_stopping: Optional[dict] = None):
    from kubetune.api.models import HyperparameterStudy

    spec: dict[str, Any] = {
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "parameters": PARAMETERS,
        "strategy": {"name": "random", "seed": seed},
        "budget": {"maxTrials": trials, "parallelTrials": 1, "maxFailedTrials": trials},
        "trialTemplate": {"template": {"spec": {"containers": [{
            "name": "trial", "command": ["kubetune-train"], "args": ["--epochs=${study.maxResource}"]}]}}},
    }
    if early_stopping is not None:
        spec["earlyStopping"] = early_stopping
    return HyperparameterStudy.model_validate({"apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterStudy",
                                               "metadata": {"name": "digits"}, "spec": spec})


def train_curve(parameters: dict[str, Any]) -> Curve:
    """All epochs of one configuration, in this process (the trainer's own code, reports captured)."""
    import kubetune.trial
    from kubetune_trainer import train

    curve: Curve = []
    kubetune.trial.report = lambda step=None, **metrics: curve.append(dict(metrics))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in parameters.items()]
    args = train.resolve(flags + [f"--epochs={MAX_EPOCHS}", "--threads=1", "--device=cpu"], env_params={})
    train.run(args)  # exits early (code 3) when training diverges; the curve then ends there
    return curve


def key(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters, sort_keys=True)


# -- kubetune, through the engine -------------------------------------------------------------

def run_kubetune(seed: int, trials: int, early_stopping: Optional[dict], curves: dict[str, Curve]) -> dict:
    from kubetune.engine import plan
    from kubetune.stoppers import diverged
    from kubetune.trials import Report, TrialRecord

    spec = study(seed, trials, early_stopping)
    records: list[TrialRecord] = []
    epochs = 0
    pruned = 0
    while True:
        result = plan(spec, records, NOW)
        if result.finished:
            break
        (create,) = result.creates()
        curve = curves[key(create.parameters)]
        history: list[Report] = []
        outcome: Optional[TrialRecord] = None
        for epoch, metrics in enumerate(curve, start=1):
            history.append(Report(epoch, metrics))
            running = TrialRecord(create.name, create.index, create.parameters, "Running", metrics, tuple(history))
            stops = [s for s in plan(spec, records + [running], NOW).stops() if s.name == create.name]
            if stops:
                outcome = TrialRecord(create.name, create.index, create.parameters, "Pruned", metrics, tuple(history),
                                      stops[0].reason, stops[0].message)
                break
        epochs += len(history)
        if outcome is None:
            done = TrialRecord(create.name, create.index, create.parameters, "Succeeded", curve[-1], tuple(history))
            if len(curve) < MAX_EPOCHS:  # the trainer stopped itself (exit 3): recorded as the runner would
                decision = diverged(spec, done, records)
                done = TrialRecord(create.name, create.index, create.parameters,
                                   "Pruned" if decision else "Failed", curve[-1], tuple(history))
            outcome = done
        pruned += outcome.phase == "Pruned"
        records.append(outcome)
    best = max((r.metrics["val_accuracy"] for r in records if r.phase == "Succeeded"), default=float("nan"))
    return {"epochs": epochs, "best_val_accuracy": best, "pruned": pruned, "trials": len(records)}


# -- Optuna, same configurations ----------------------------------------------------------------

def run_optuna(seed: int, trials: int, pruner_factory: Callable[[], Any], curves: dict[str, Curve],
               configs: list[dict[str, Any]]) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spent = {"epochs": 0}

    def objective(trial: "optuna.Trial") -> float:
        curve = curves[key(configs[trial.number])]
        for epoch, metrics in enumerate(curve, start=1):
            spent["epochs"] += 1
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        if len(curve) < MAX_EPOCHS:
            raise optuna.TrialPruned()  # diverged: the trainer ended it; not a result
        return curve[-1]["val_accuracy"]

    optuna_study = optuna.create_study(direction="maximize", pruner=pruner_factory(),
                                       sampler=optuna.samplers.RandomSampler(seed=seed))
    optuna_study.optimize(objective, n_trials=trials)
    complete = [t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"epochs": spent["epochs"], "best_val_accuracy": max((t.value for t in complete), default=float("nan")),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in optuna_study.trials),
            "trials": len(optuna_study.trials)}


def methods() -> dict[str, tuple[str, Any]]:
    import optuna

    return {
        "no stopping": ("kubetune", None),
        "kubetune median": ("kubetune", {"name": "median"}),
        "kubetune asha": ("kubetune", {"name": "asha", "settings": {"maxResource": MAX_EPOCHS}}),  # the defaults
        "kubetune asha min 3": ("kubetune", {"name": "asha", "settings": {"reductionFactor": 3, "minResource": 3,
                                                                          "maxResource": MAX_EPOCHS}}),
        "kubetune asha eta 2": ("kubetune", {"name": "asha", "settings": {"reductionFactor": 2, "minResource": 1,
                                                                          "maxResource": MAX_EPOCHS}}),
        "kubetune hyperband": ("kubetune", {"name": "hyperband", "settings": {"maxResource": MAX_EPOCHS}}),
        "optuna median": ("optuna", lambda: optuna.pruners.MedianPruner()),
        "optuna sha (asha)": ("optuna", lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3)),
        "optuna sha min 3": ("optuna", lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=3, reduction_factor=3)),
        "optuna sha eta 2": ("optuna", lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=2)),
        "optuna sha defaults": ("optuna", lambda: optuna.pruners.SuccessiveHalvingPruner()),
        "optuna hyperband": ("optuna", lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=MAX_EPOCHS, reduction_factor=3)),
    }


def plot(curves_by_seed: dict[int, dict[str, Curve]], configs: list[dict[str, Any]], seed: int, path: Path) -> None:
    """The curves of one seed with the trials ASHA pruned marked where it stopped them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kubetune.engine import plan
    from kubetune.trials import Report, TrialRecord

    spec = study(seed, len(configs), methods()["kubetune asha"][1])
    records: list[TrialRecord] = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, parameters in enumerate(configs):
        curve = curves_by_seed[seed][key(parameters)]
        history: list[Report] = []
        phase, reason = "Succeeded", ""
        for epoch, metrics in enumerate(curve, start=1):
            history.append(Report(epoch, metrics))
            running = TrialRecord(f"digits-{index:04d}", index, parameters, "Running", metrics, tuple(history))
            stops = plan(spec, records + [running], NOW).stops()
            if stops:
                phase, reason = "Pruned", stops[0].reason
                break
        if phase == "Succeeded" and len(curve) < MAX_EPOCHS:
            phase, reason = "Pruned", "Diverged"
        records.append(TrialRecord(f"digits-{index:04d}", index, parameters, phase, dict(history[-1].metrics),
                                   tuple(history)))
        xs = list(range(1, len(curve) + 1))
        ys = [m["val_accuracy"] for m in curve]
        ax.plot(xs, ys, color="0.85", linewidth=0.8, zorder=1)  # what it would have done
        run = len(history)
        color = {"Succeeded": "tab:blue", "Pruned": "tab:red" if reason == "EarlyStopped" else "tab:purple"}[phase]
        ax.plot(xs[:run], ys[:run], color=color, linewidth=1.2, zorder=2)
        if phase == "Pruned":
            ax.scatter([run], [ys[run - 1]], marker="x", color=color, zorder=3)
    ax.set_xscale("log", base=3)
    ax.set_xticks([1, 3, 9, 27], ["1", "3", "9", "27"])
    ax.set_xlabel("epoch (rungs at 1, 3, 9; complete at 27)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.0)
    ax.set_title(f"ASHA (the defaults with maxResource {MAX_EPOCHS}: reductionFactor 3, minResource 1) "
                 f"on the reference trainer, seed {seed}\n"
                 f"blue: ran to the end; red x: pruned (EarlyStopped); purple x: Diverged; "
                 f"grey: the rest of a pruned curve", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are FIRST..FIRST+SEEDS-1 (5 with --seeds 5: a held-out set for settings chosen on 0-4)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=max(1, multiprocessing.cpu_count()))
    parser.add_argument("--output", type=Path, default=RESULTS / "stopping.json")
    parser.add_argument("--plot", type=str, default=str(DOCS / "early-stopping-asha.png"), help="'' for no plot")
    parser.add_argument("--curves", type=Path, default=None,
                        help="keep the trained curves in this JSON file and reuse them on the next run")
    options = parser.parse_args()

    from kubetune.strategies import make_strategy

    began = time.perf_counter()
    configs = {seed: [make_strategy(study(seed, options.trials)).suggest(i, []) for i in range(options.trials)]
               for seed in range(options.first_seed, options.first_seed + options.seeds)}
    unique = {key(p): p for seed_configs in configs.values() for p in seed_configs}
    cached: dict[str, Curve] = {}
    if options.curves is not None and options.curves.exists():
        cached = json.loads(options.curves.read_text())
    trained = {k: cached[k] for k in unique if k in cached}
    missing = [k for k in unique if k not in trained]
    print(f"training {len(missing)} configurations x {MAX_EPOCHS} epochs on {options.workers} processes...",
          file=sys.stderr, flush=True)
    with multiprocessing.get_context("spawn").Pool(options.workers) as pool:
        trained.update(zip(missing, pool.map(train_curve, [unique[k] for k in missing], chunksize=1)))
    if options.curves is not None:
        options.curves.write_text(json.dumps({**cached, **trained}))
    train_seconds = time.perf_counter() - began
    curves_by_seed = {seed: {key(p): trained[key(p)] for p in configs[seed]} for seed in configs}

    results: dict[str, list[dict]] = {}
    for name, (kind, setting) in methods().items():
        results[name] = []
        for seed in configs:
            if kind == "kubetune":
                outcome = run_kubetune(seed, options.trials, setting, curves_by_seed[seed])
            else:
                outcome = run_optuna(seed, options.trials, setting, curves_by_seed[seed], configs[seed])
            results[name].append({"seed": seed, **outcome})

    baseline = results["no stopping"]
    rows = []
    header = f"{'method':<20} {'epochs':>8} {'of no stopping':>15} {'best val acc':>13} {'gap (pp)':>9} {'within 0.5pp':>13} {'pruned':>7}"
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        epochs = statistics.mean(r["epochs"] for r in runs)
        fraction = epochs / statistics.mean(r["epochs"] for r in baseline)
        best = statistics.mean(r["best_val_accuracy"] for r in runs)
        gaps = [100 * (b["best_val_accuracy"] - r["best_val_accuracy"]) for r, b in zip(runs, baseline)]
        within = sum(g <= 0.5 for g in gaps)
        pruned = statistics.mean(r["pruned"] for r in runs)
        rows.append({"method": name, "mean_epochs": epochs, "fraction_of_no_stopping": fraction,
                     "mean_best_val_accuracy": best, "mean_gap_pp": statistics.mean(gaps),
                     "max_gap_pp": max(gaps), "seeds_within_0_5pp": within, "mean_pruned": pruned, "runs": runs})
        print(f"{name:<20} {epochs:>8.1f} {fraction:>14.1%} {100 * best:>12.2f}% {statistics.mean(gaps):>9.2f} "
              f"{within:>9}/{len(runs)} {pruned:>7.1f}")
    print(f"\n{options.seeds} seeds ({min(configs)}-{max(configs)}) x {options.trials} trials, up to {MAX_EPOCHS} epochs each; "
          f"gap: no-stopping best minus the method's best, per seed, mean; training {train_seconds:.0f}s")
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps({
        "seeds": sorted(configs), "trials": options.trials, "max_epochs": MAX_EPOCHS, "parameters": PARAMETERS,
        "objective": "val_accuracy (maximize)", "methods": rows,
    }, indent=2) + "\n")
    print(f"wrote {options.output}", file=sys.stderr)
    if options.plot:
        first = min(configs)
        plot(curves_by_seed, configs[first], first, Path(options.plot))
        print(f"wrote {options.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
