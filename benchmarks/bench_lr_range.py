"""The learning-rate range test beside random search, on the reference trainer (digits).

Everything but the learning rate is fixed: batch size 64, 8 epochs, the trainer's defaults
otherwise (an MLP of 2 x 128, no dropout; SGD with momentum 0.9), split seed 0. For each
optimizer (Adam and SGD):

  random search  kubetune's random strategy, 20 trials, lr log-uniform in [1e-5, 1] (the
                 range a user would give the lr parameter), repeated with 5 search seeds;
                 every trial trains with trainer seed 0. The best trial (val_accuracy) of
                 each search gives "the best lr" and its val accuracy.
  range test     one range-test trial (100 steps, beta 0.98, stopFactor 4) with trainer
                 seeds 0-2, over the lr parameter's range [1e-5, 1] and over the
                 trial SDK's default [1e-7, 10]; each rule of kubetune.lr_range picks an lr
                 from the curve, and a full training (same seed) at that lr gives its val
                 accuracy.

Reported: the lr each approach chose; its ratio to the random searches' best lr (their
geometric mean); whether each seed's choice lies within a factor of 3 of it, from the whole
curve (the local runner keeps every report) and from the curve a pod's 4 KiB termination
message keeps (the trial SDK thins it); the val accuracy and its gap to the random searches'
best; and the trials and training epochs each approach used. The random search's best
accuracy is the best of 20 trials on the same validation split, so it is optimistic by
construction: the gap is an upper bound.

    make bench-lr-range                               # ~1.5 min on 2 cores
    python benchmarks/bench_lr_range.py --smoke --results /tmp/lr   # seconds: keeps the harness honest

Results: benchmarks/results/lr_range.json and lr_range.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZE = 64
LR_PARAMETER = {"name": "lr", "type": "float", "min": 1.0e-5, "max": 1.0, "scale": "log"}
RANGES = {"lr range 1e-5..1": (1.0e-5, 1.0), "default 1e-7..10": (1.0e-7, 10.0)}
RANGE_TEST = {"beta": 0.98, "stopFactor": 4.0}
FACTOR = 3.0


# -- one trainer run, in this process ---------------------------------------------------------

@contextlib.contextmanager
def captured_reports() -> Iterator[list[tuple[Optional[int], dict[str, float]]]]:
    """kubetune.trial.report collects into a list instead of serving metrics (restored after)."""
    import kubetune.trial

    reports: list[tuple[Optional[int], dict[str, float]]] = []
    original = kubetune.trial.report
    kubetune.trial.report = lambda step=None, **metrics: reports.append((step, dict(metrics)))
    try:
        yield reports
    finally:
        kubetune.trial.report = original


def trainer_args(optimizer: str, seed: int, batch_size: int, *flags: str):
    from kubetune_trainer import train

    return train.resolve([f"--optimizer={optimizer}", f"--batch-size={batch_size}", f"--seed={seed}",
                          "--threads=1", "--device=cpu", *flags], env_params={})


def train_job(job: tuple[str, float, int, int, int]) -> dict[str, Any]:
    """Normal training: the final val_accuracy (None if it diverged) and the epochs it ran."""
    from kubetune_trainer import train

    optimizer, lr, seed, epochs, batch_size = job
    with contextlib.redirect_stderr(io.StringIO()), captured_reports() as reports:
        code = train.run(trainer_args(optimizer, seed, batch_size, f"--lr={lr!r}", f"--epochs={epochs}"))
    accuracy = reports[-1][1]["val_accuracy"] if reports and code == train.EXIT_OK else None
    return {"lr": lr, "seed": seed, "exit": code, "epochs": len(reports), "val_accuracy": accuracy}


def range_test_job(job: tuple[str, int, float, float, int, int, float]) -> list[tuple[Optional[int], dict[str, float]]]:
    """A range test's reports (step, {lr, loss, raw_loss})."""
    from kubetune_trainer import train

    optimizer, seed, min_lr, max_lr, steps, batch_size, beta = job
    args = trainer_args(optimizer, seed, batch_size)
    args.lr_range_test = {"minLr": min_lr, "maxLr": max_lr, "steps": steps, "beta": beta,
                          "stopFactor": RANGE_TEST["stopFactor"]}
    with contextlib.redirect_stderr(io.StringIO()), captured_reports() as reports:
        train.run(args)
    return reports


def run_jobs(function: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    if workers <= 1:
        return [function(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(function, jobs, chunksize=1)


# -- the pieces of kubetune under test -------------------------------------------------------

def search_lrs(seed: int, trials: int) -> list[float]:
    """The learning rates kubetune's random strategy suggests for a study of one lr parameter."""
    from kubetune.api.models import HyperparameterStudy
    from kubetune.strategies import make_strategy

    study = HyperparameterStudy.model_validate({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterStudy", "metadata": {"name": "digits-lr"},
        "spec": {"objective": {"metric": "val_accuracy", "goal": "maximize"}, "parameters": [LR_PARAMETER],
                 "strategy": {"name": "random", "seed": seed}, "budget": {"maxTrials": trials},
                 "trialTemplate": {"template": {"spec": {"containers": [{"name": "trial", "command": ["kubetune-train"]}]}}}},
    })
    strategy = make_strategy(study)
    return [strategy.suggest(i, [])["lr"] for i in range(trials)]


def pod_curve(reports: list[tuple[Optional[int], dict[str, float]]]) -> list[tuple[Optional[int], dict[str, float]]]:
    """The reports a pod's termination message keeps (the trial SDK's own trimming, 4 KiB)."""
    from kubetune import trial

    state = SimpleNamespace(lock=threading.Lock(), latest=dict(reports[-1][1]), latest_step=reports[-1][0],
                            history=[{"step": step, "metrics": metrics} for step, metrics in reports])
    record = json.loads(trial._Reporter.termination_message(state, trial.POD_TERMINATION_LIMIT))
    return [(entry["step"], entry["metrics"]) for entry in record["history"]]


def choose(reports, rule: str) -> Optional[float]:
    from kubetune import lr_range
    from kubetune.trials import Report

    try:
        return lr_range.choose(lr_range.curve_from_history([Report(s, m) for s, m in reports]), rule).learning_rate
    except ValueError:
        return None


# -- the benchmark ---------------------------------------------------------------------------

def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def within(lr: Optional[float], reference: float) -> bool:
    return lr is not None and 1 / FACTOR <= lr / reference <= FACTOR


def train_size() -> int:
    from kubetune_trainer import train

    _, labels = train.load_digits()
    return len(train.stratified_split(labels, train.VAL_FRACTION, 0)[0])


def main(argv: Optional[list[str]] = None) -> int:
    from kubetune import lr_range

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd"], choices=["adam", "sgd", "adamw"])
    parser.add_argument("--seeds", type=int, default=3, help="range-test (and its training) trainer seeds 0..N-1")
    parser.add_argument("--search-seeds", type=int, default=5, help="random searches per optimizer")
    parser.add_argument("--trials", type=int, default=20, help="trials per random search")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--steps", type=int, default=100, help="range-test steps")
    parser.add_argument("--beta", type=float, default=RANGE_TEST["beta"], help="range-test loss smoothing")
    parser.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the harness, says nothing about quality")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.optimizers, args.seeds, args.search_seeds, args.trials = ["adam"], 1, 1, 3
        args.epochs, args.steps, args.workers = 1, 20, 1

    began = time.perf_counter()
    n_train = train_size()
    seeds = range(args.seeds)
    searches = {(opt, s): search_lrs(s, args.trials) for opt in args.optimizers for s in range(args.search_seeds)}
    search_jobs = sorted({(opt, lr, 0, args.epochs, args.batch_size) for (opt, _), lrs in searches.items() for lr in lrs})
    test_jobs = [(opt, seed, lo, hi, args.steps, args.batch_size, args.beta) for opt in args.optimizers for lo, hi in RANGES.values() for seed in seeds]
    print(f"{len(search_jobs)} random-search trainings and {len(test_jobs)} range tests on {args.workers} processes...",
          file=sys.stderr, flush=True)
    trained = {(r["lr"], r["seed"], job[0]): r for job, r in zip(search_jobs, run_jobs(train_job, search_jobs, args.workers))}
    curves = dict(zip(test_jobs, run_jobs(range_test_job, test_jobs, args.workers)))

    picks: dict[tuple, Optional[float]] = {}
    for job, reports in curves.items():
        for rule in lr_range.RULES:
            picks[job + (rule, "full")] = choose(reports, rule)
            picks[job + (rule, "4KiB")] = choose(pod_curve(reports), rule) if reports else None
    pick_jobs = sorted({(job[0], lr, job[1], args.epochs, args.batch_size) for job, lr in picks.items()
                        if lr is not None and job[-1] == "full" and (lr, job[1], job[0]) not in trained})
    print(f"{len(pick_jobs)} trainings at the range tests' picks...", file=sys.stderr, flush=True)
    trained.update({(r["lr"], r["seed"], job[0]): r for job, r in zip(pick_jobs, run_jobs(train_job, pick_jobs, args.workers))})

    rows: list[dict[str, Any]] = []
    for opt in args.optimizers:
        bests = []
        for s in range(args.search_seeds):
            runs = [trained[(lr, 0, opt)] for lr in searches[(opt, s)]]
            done = [r for r in runs if r["val_accuracy"] is not None]
            if not done:
                raise SystemExit(f"every trial of the {opt} random search with seed {s} diverged")
            best = max(done, key=lambda r: r["val_accuracy"])  # the first of equal ones
            bests.append({"search_seed": s, "lr": best["lr"], "val_accuracy": best["val_accuracy"],
                          "epochs": sum(r["epochs"] for r in runs), "diverged": len(runs) - len(done)})
        reference = geomean([b["lr"] for b in bests])
        best_accuracy = statistics.fmean(b["val_accuracy"] for b in bests)
        rows.append({"optimizer": opt, "approach": f"random search, {args.trials} trials", "trials": args.trials,
                     "epochs": statistics.fmean(b["epochs"] for b in bests), "lrs": [b["lr"] for b in bests],
                     "ratio": 1.0, "within_full": None, "within_4kib": None, "val_accuracy": best_accuracy,
                     "gap_pp": 0.0, "runs": bests})
        for range_name, (lo, hi) in RANGES.items():
            for rule in lr_range.RULES:
                runs = []
                for seed in seeds:
                    job = (opt, seed, lo, hi, args.steps, args.batch_size, args.beta)
                    lr, lr_4kib = picks[job + (rule, "full")], picks[job + (rule, "4KiB")]
                    training = trained[(lr, seed, opt)] if lr is not None else None
                    runs.append({"seed": seed, "lr": lr, "lr_4kib": lr_4kib, "range_test_steps": len(curves[job]),
                                 "range_test_epochs": len(curves[job]) * args.batch_size / n_train,
                                 "val_accuracy": training["val_accuracy"] if training else None,
                                 "epochs": training["epochs"] if training else 0})
                chosen = [r["lr"] for r in runs if r["lr"] is not None]
                accuracies = [r["val_accuracy"] or 0.0 for r in runs]  # a diverged training scores 0
                name = f"range test {range_name}, {rule}" + (" (default rule)" if rule == lr_range.DEFAULT_RULE else "")
                rows.append({"optimizer": opt, "approach": name, "range": [lo, hi], "rule": rule, "trials": 2,
                             "epochs": statistics.fmean(r["range_test_epochs"] + r["epochs"] for r in runs),
                             "lrs": chosen, "ratio": geomean(chosen) / reference if chosen else None,
                             "within_full": sum(within(r["lr"], reference) for r in runs),
                             "within_4kib": sum(within(r["lr_4kib"], reference) for r in runs),
                             "val_accuracy": statistics.fmean(accuracies),
                             "gap_pp": 100 * (best_accuracy - statistics.fmean(accuracies)), "runs": runs})
    seconds = time.perf_counter() - began

    lines = [
        f"Reference trainer (digits MLP), batch size {args.batch_size}, {args.epochs} epochs, all else fixed; lr searched in "
        f"[{LR_PARAMETER['min']:g}, {LR_PARAMETER['max']:g}] (log). Random search: {args.search_seeds} searches of "
        f"{args.trials} trials (trainer seed 0); its best lr is the geometric mean over searches. Range test: "
        f"{args.steps} steps, beta {args.beta:g}, stopFactor {RANGE_TEST['stopFactor']:g}, trainer seeds "
        f"0-{args.seeds - 1}, then one training at the chosen lr. Within {FACTOR:g}x: seeds whose pick is within a "
        f"factor of {FACTOR:g} of the search's best lr, from the whole curve / from the curve a pod's 4 KiB "
        f"termination message keeps. Gap: the searches' mean best val accuracy minus the approach's, in points "
        f"(the search's best is the best of {args.trials} on the validation split: optimistic). {seconds:.0f}s.",
        "",
        "| optimizer | approach | trials | epochs | lr chosen | ratio to search's best | "
        f"within {FACTOR:g}x (whole / 4 KiB) | val accuracy | gap (pp) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lrs = row["lrs"]
        shown = "-" if not lrs else (f"{geomean(lrs):.2g}" if len(set(lrs)) == 1 else
                                     f"{geomean(lrs):.2g} ({min(lrs):.2g}-{max(lrs):.2g})")
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        hits = "-" if row["within_full"] is None else f"{row['within_full']}/{args.seeds} / {row['within_4kib']}/{args.seeds}"
        lines.append(f"| {row['optimizer']} | {row['approach']} | {row['trials']} | {row['epochs']:.1f} | {shown} | "
                     f"{ratio} | {hits} | {100 * row['val_accuracy']:.1f}% | {row['gap_pp']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "lr_range.md").write_text(text)
    (args.results / "lr_range.json").write_text(json.dumps({
        "batch_size": args.batch_size, "epochs": args.epochs, "lr_parameter": LR_PARAMETER, "ranges": RANGES,
        "range_test": {"steps": args.steps, "beta": args.beta, "stopFactor": RANGE_TEST["stopFactor"]},
        "seeds": list(seeds), "search_seeds": args.search_seeds,
        "trials": args.trials, "factor": FACTOR, "default_rule": lr_range.DEFAULT_RULE, "seconds": round(seconds, 1),
        "rows": rows,
        "curves": {f"{job[0]} {lo:g}..{hi:g} seed {job[1]}": [[float(f"{m[k]:.5g}") for k in ("lr", "loss", "raw_loss")]
                                                               for _, m in reports]
                   for job, reports in curves.items() for lo, hi in [job[2:4]]},
    }, indent=1) + "\n")
    print(f"wrote {args.results / 'lr_range.json'} and lr_range.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
