"""Sample efficiency of kubetune's strategies beside Optuna's, Bayesmark-style; and suggestion latency.

For every problem, seed and batch size each contender runs one study of `--budget` trials
(with --budget 100, the 30-trial numbers are read off the first 30 trials of the same run:
no contender knows the budget).
The best value so far after each trial is normalised per problem so that the optimum is 0 and
the median random-search trial is 1 (Bayesmark's normalisation); the optimum of a real
tuning problem is the best value any contender found. Reported per problem and overall:

  mean normalised regret at 30 and at 100 trials (lower is better; 0 found the optimum)
  trials to target: median number of trials to reach the level random search reaches, half
                    the time, within the whole budget ("-": not reached by half the seeds);
                    random search itself needs the whole budget, by construction

Random search's trials are independent draws, so the baseline (the median trial, the level,
and the trials random search needs) pools every random trial of the run, and on a synthetic
problem 20,000 more draws: ten seeds alone gave a baseline that moved by a factor of three.

With batch size 4, four trials run at once: each study suggests four configurations, the
later ones seeing the earlier ones as Pending (exactly what the engine passes a strategy),
then all four are evaluated and reported. Optuna's samplers get the same batches through
ask/tell. Peers use their defaults.

    make bench-strategies                                      # 20 seeds, budget 30, batch 1 and 4 (~20 min on 2 cores)
    python benchmarks/bench_strategies.py --budget 100         # also 100 trials: hours, Optuna's GPSampler dominates
    python benchmarks/bench_strategies.py --smoke              # seconds: keeps the harness honest
    python benchmarks/bench_strategies.py --problems branin lr_like --seeds 5 --batches 1
    python benchmarks/bench_strategies.py --latency-only       # suggestion time at 100 and 1,000 trials
    python benchmarks/bench_strategies.py --first-seed 100 --results /tmp/held-out   # held-out seeds
    python benchmarks/bench_strategies.py --rescore benchmarks/results/strategies.json --results /tmp/again  # score saved runs again

Results: benchmarks/results/strategies.json, strategies.md and strategies-<problem>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from strategy_problems import DEFAULT, PROBLEMS, Problem  # noqa: E402

from kubetune.api.models import Objective, Parameter  # noqa: E402
from kubetune.strategies import STRATEGIES  # noqa: E402
from kubetune.trials import TrialRecord  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPORT_AT = (30, 100)
KUBETUNE = ("bayesian", "random", "grid")
OPTUNA = ("optuna-tpe", "optuna-gp")
BASELINE_SEED = 1_000_000  # far from the contenders' seeds


def optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


# -- running one study --------------------------------------------------------------------


def run_kubetune(name: str, problem: Problem, seed: int, budget: int, batch: int) -> list[float]:
    parameters = [Parameter.model_validate(p) for p in problem.parameters]
    settings = {"resolution": grid_resolution(parameters, budget)} if name == "grid" else {}
    strategy = STRATEGIES[name](parameters, Objective(metric="loss"), seed, settings)
    history: list[TrialRecord] = []
    values: list[float] = []
    size = strategy.size()
    while len(values) < budget and (size is None or len(values) < size):
        pending: list[TrialRecord] = []
        for _ in range(min(batch, budget - len(values), (size or budget) - len(values))):
            index = len(history) + len(pending)
            suggestion = strategy.suggest(index, history + pending)
            pending.append(TrialRecord(f"t-{index}", index, suggestion, phase="Pending"))
        for trial in pending:
            value = problem.function(dict(trial.parameters))
            values.append(value)
            history.append(TrialRecord(trial.name, trial.index, trial.parameters, phase="Succeeded", metrics={"loss": value}))
    return values


def grid_resolution(parameters: list[Parameter], budget: int) -> int:
    """Points per continuous parameter so that the whole grid fits in the budget (at least 2)."""
    return max(2, int(budget ** (1 / len(parameters)) + 1e-9))


def run_optuna(name: str, problem: Problem, seed: int, budget: int, batch: int) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed) if name == "optuna-tpe" else optuna.samplers.GPSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    values: list[float] = []
    while len(values) < budget:
        # Optuna samples when a parameter is first asked for, so every trial of the batch gets
        # its parameters before any result is told: otherwise the batch would run sequentially.
        trials = [study.ask() for _ in range(min(batch, budget - len(values)))]
        batch_parameters = [optuna_suggest(trial, problem.parameters) for trial in trials]
        for trial, parameters in zip(trials, batch_parameters):
            value = problem.function(parameters)
            study.tell(trial, value)
            values.append(value)
    return values


def optuna_suggest(trial, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    """The same space in Optuna's terms: pow2 as an integer exponent (Optuna has no pow2 scale)."""
    out: dict[str, Any] = {}
    for p in parameters:
        name, scale = p["name"], p.get("scale", "linear")
        if p["type"] == "categorical":
            out[name] = trial.suggest_categorical(name, p["values"])
        elif scale == "pow2":
            low, high = int(p["min"]).bit_length() - 1, int(p["max"]).bit_length() - 1
            out[name] = 1 << trial.suggest_int(name + "_log2", low, high)
        elif p["type"] == "int":
            out[name] = trial.suggest_int(name, p["min"], p["max"], log=scale == "log", step=int(p.get("step") or 1))
        else:
            out[name] = trial.suggest_float(name, p["min"], p["max"], log=scale == "log", step=p.get("step"))
    return out


def one_thread() -> None:
    """One process per core: torch must not also spread each process over every core."""
    import torch

    torch.set_num_threads(1)


def run_one(job: tuple[str, str, int, int, int]) -> dict[str, Any]:
    contender, problem_name, seed, budget, batch = job
    problem = PROBLEMS[problem_name]
    began = time.perf_counter()
    runner = run_optuna if contender.startswith("optuna") else run_kubetune
    values = runner(contender, problem, seed, budget, batch)
    return {"contender": contender, "problem": problem_name, "seed": seed, "batch": batch,
            "values": values, "seconds": time.perf_counter() - began}


# -- scoring ------------------------------------------------------------------------------


def report_points(budget: int) -> list[int]:
    """Where the tables read the curves: 30 and 100 trials, or the whole budget when it is smaller."""
    return [at for at in REPORT_AT if at <= budget] or [budget]


def best_so_far(values: list[float], budget: int) -> list[float]:
    """The running minimum, padded to the budget when a finite grid ran out early."""
    curve, best = [], math.inf
    for v in values:
        best = min(best, v)
        curve.append(best)
    return curve + [best] * (budget - len(curve))


def random_baseline(problem: Problem, runs: list[dict[str, Any]], draws: int) -> list[float]:
    """Values of single random-search trials, the baseline the scores are normalised by.

    Random search's trials are independent draws, so every random trial of the run (all seeds;
    they are the same at every batch size) is one sample; a synthetic problem costs
    microseconds per evaluation and adds `draws` more.
    Ten seeds' first trials or final bests alone make a noisy baseline: on the learning-rate-like
    problem six of seeds 0-9's first trials diverged, where 28% of all draws do.
    """
    # One run per seed: random search's trials do not depend on the batch size.
    by_seed = {r["seed"]: r["values"] for r in runs if r["contender"] == "random"}
    values = [v for seed in sorted(by_seed) for v in by_seed[seed]]
    if problem.kind == "synthetic":
        strategy = STRATEGIES["random"]([Parameter.model_validate(p) for p in problem.parameters],
                                        Objective(metric="loss"), BASELINE_SEED, {})
        values += [problem.function(strategy.suggest(i, [])) for i in range(draws)]
    return values


def score(runs: list[dict[str, Any]], problems: list[str], budget: int, draws: int = 20_000) -> dict[str, Any]:
    """Normalised regret curves, per (problem, batch, contender), the summary rows, and per
    problem the size of the random baseline and the trials random search needs to reach the target."""
    curves: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    rows = []
    for problem_name in problems:
        problem = PROBLEMS[problem_name]
        mine = [r for r in runs if r["problem"] == problem_name]
        optimum = problem.optimum if problem.optimum is not None else min(min(r["values"]) for r in mine)
        baseline = sorted(random_baseline(problem, mine, draws))
        scale = statistics.median(baseline) - optimum
        if scale <= 0:
            scale = 1.0  # random search's typical trial was optimal: nothing to normalise by
        # The target: the level random search reaches, half the time, within the whole budget.
        # One random trial gets there with probability q where 1 - (1 - q)^budget = 1/2.
        level = baseline[min(int((1 - 0.5 ** (1 / budget)) * len(baseline)), len(baseline) - 1)]
        target = (level - optimum) / scale
        share = sum(v <= level for v in baseline) / len(baseline)
        random_needs = math.ceil(math.log(0.5) / math.log(1 - share)) if share < 1 else 1
        baselines[problem_name] = {"draws": len(baseline), "random_needs": random_needs}
        for key in sorted({(r["batch"], r["contender"]) for r in mine}):
            batch, contender = key
            per_seed = [[(v - optimum) / scale for v in best_so_far(r["values"], budget)]
                        for r in mine if (r["batch"], r["contender"]) == key]
            mean_curve = [statistics.fmean(column) for column in zip(*per_seed)]
            curves.setdefault(problem_name, {}).setdefault(str(batch), {})[contender] = mean_curve
            hits = first_hits(per_seed, target)
            row = {"problem": problem_name, "batch": batch, "contender": contender, "seeds": len(per_seed),
                   "target": target, "trials_to_target": trials_to_target(hits),
                   "first_hits": [None if math.isinf(h) else h for h in hits]}
            for at in report_points(budget):
                finals = [curve[at - 1] for curve in per_seed]
                row[f"regret@{at}"] = statistics.fmean(finals)
                row[f"stderr@{at}"] = statistics.stdev(finals) / math.sqrt(len(finals)) if len(finals) > 1 else 0.0
            seconds = [r["seconds"] for r in mine if (r["batch"], r["contender"]) == key]
            row["seconds_per_study"] = statistics.fmean(seconds)
            rows.append(row)
    return {"curves": curves, "rows": rows, "baselines": baselines}


def first_hits(per_seed: list[list[float]], target: float) -> list[float]:
    """Per seed, the first trial at or below the target (inf: never)."""
    return [next((i + 1 for i, v in enumerate(curve) if v <= target), math.inf) for curve in per_seed]


def trials_to_target(needed: list[float]) -> Optional[float]:
    """Median over seeds of the first trial at or below the target; a seed that never gets there
    counts as never. None when fewer than half the seeds reach it."""
    # The lower median: with an even number of seeds and exactly half of them there, the
    # ordinary median would average a trial count with "never".
    median = statistics.median_low(needed)
    return None if math.isinf(median) else float(median)


def verdict(rows: list[dict[str, Any]], budget: int, baselines: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against this run's numbers; says plainly which are missed."""
    lines = []
    at = report_points(budget)[0]
    key = f"regret@{at}"
    by = {(r["problem"], r["batch"], r["contender"]): r for r in rows}
    for batch in sorted({r["batch"] for r in rows}):
        problems = sorted({r["problem"] for r in rows if r["batch"] == batch})

        def mean(contender: str) -> Optional[float]:
            values = [by[(p, batch, contender)][key] for p in problems if (p, batch, contender) in by]
            return statistics.fmean(values) if len(values) == len(problems) else None

        ours, tpe, gp = mean("bayesian"), mean("optuna-tpe"), mean("optuna-gp")
        peers = [v for v in (tpe, gp) if v is not None]
        if ours is not None and peers:
            better = min(peers)
            ratio = ours / better if better > 0 else math.inf
            lines.append(f"batch {batch}: mean normalised regret at {at} trials: bayesian {ours:.3f}, "
                         f"better Optuna sampler {better:.3f}: ratio {ratio:.2f} (target <= 0.8) "
                         f"{'MET' if ratio <= 0.8 else 'MISSED'}")
        # The target is at 30 trials; with --budget 100 the same check at 100 is shown too.
        for point in report_points(budget) if tpe is not None else ():
            worse = []
            for p in problems:
                a, b = by.get((p, batch, "bayesian")), by.get((p, batch, "optuna-tpe"))
                if a and b:
                    noise = 2 * math.hypot(a[f"stderr@{point}"], b[f"stderr@{point}"])
                    if a[f"regret@{point}"] - b[f"regret@{point}"] > noise:
                        worse.append(f"{p} ({a[f'regret@{point}']:.3f} vs {b[f'regret@{point}']:.3f}, 2 s.e. {noise:.3f})")
            lines.append(f"batch {batch}: problems where bayesian is worse than Optuna TPE by more than noise (2 s.e.) "
                         f"at {point} trials{'' if point == at else ' (not a target)'}: " + (", ".join(worse) if worse else "none"))
        lr, rnd = by.get(("lr_like", batch, "bayesian")), by.get(("lr_like", batch, "random"))
        if lr and rnd and "lr_like" in baselines:
            ours_t = lr["trials_to_target"]
            needs, draws = baselines["lr_like"]["random_needs"], baselines["lr_like"]["draws"]
            ours_text = f"{ours_t:g}" if ours_t is not None else f"not within {budget}"
            seeds_text = f"{rnd['trials_to_target']:g}" if rnd["trials_to_target"] is not None else f"not within {budget}"
            met = ours_t is not None and ours_t <= needs / 3
            # The margin: the median is met while at least half the seeds are there by the limit.
            limit = needs // 3
            by_limit = sum(h is not None and h <= limit for h in lr["first_hits"])
            lines.append(f"batch {batch}: lr_like trials to target: bayesian {ours_text} ({by_limit} of {lr['seeds']} "
                         f"seeds by trial {limit}), random search needs {needs} "
                         f"(from {draws:,} random trials; its {rnd['seeds']} seeds here took {seeds_text}) "
                         f"(target: a third of random's) {'MET' if met else 'MISSED'}")
    return lines


# -- latency ------------------------------------------------------------------------------


def latency(observations: int, repeats: int, contenders: list[str]) -> list[dict[str, Any]]:
    """Median seconds for one suggestion given `observations` finished trials, d=5."""
    import random as stdlib_random

    problem_space = [{"name": f"x{i}", "type": "float", "min": 0.0, "max": 1.0} for i in range(5)]
    rng = stdlib_random.Random(0)
    points = [{f"x{i}": rng.random() for i in range(5)} for _ in range(observations)]
    values = [sum((v - 0.3) ** 2 for v in p.values()) + 0.01 * rng.random() for p in points]
    rows = []
    for contender in contenders:
        times = []
        if contender.startswith("optuna"):
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            distributions = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(5)}
            for repeat in range(repeats):
                sampler = optuna.samplers.TPESampler(seed=repeat) if contender == "optuna-tpe" else optuna.samplers.GPSampler(seed=repeat)
                study = optuna.create_study(sampler=sampler)
                study.add_trials([optuna.trial.create_trial(params=p, distributions=distributions, value=v)
                                  for p, v in zip(points, values)])
                began = time.perf_counter()
                trial = study.ask()
                for name in distributions:
                    trial.suggest_float(name, 0.0, 1.0)
                times.append(time.perf_counter() - began)
        else:
            parameters = [Parameter.model_validate(p) for p in problem_space]
            strategy = STRATEGIES[contender](parameters, Objective(metric="loss"), 0, {})
            history = [TrialRecord(f"t-{i}", i, p, phase="Succeeded", metrics={"loss": v})
                       for i, (p, v) in enumerate(zip(points, values))]
            strategy.suggest(observations, history)  # first call pays for importing torch
            for repeat in range(repeats):
                began = time.perf_counter()
                strategy.suggest(observations + repeat, history)
                times.append(time.perf_counter() - began)
        rows.append({"contender": contender, "observations": observations, "median_ms": statistics.median(times) * 1000})
    return rows


# -- output -------------------------------------------------------------------------------


def markdown(scored: dict[str, Any], budget: int, latency_rows: list[dict[str, Any]], verdict_lines: list[str],
             settings: dict[str, Any]) -> str:
    seeds = settings["seeds"]
    first = settings.get("first_seed", 0)
    seed_text = f"{seeds} ({first}-{first + seeds - 1})" if first else str(seeds)
    out = [f"Seeds: {seed_text}; budget {budget}; batch sizes {settings['batches']}; "
           f"normalised regret: optimum 0, the median random-search trial 1 (mean over seeds; lower is better); "
           f"trials to target: median trials to reach the level random search reaches half the time within {budget} trials "
           f"('-': not reached by half the seeds). The random baseline pools every random trial of the run, plus "
           f"extra random draws on synthetic problems ('baselines' in the JSON).", ""]
    rows = scored["rows"]
    if rows:
        ats = report_points(budget)
        header = ["problem", "batch", "contender"] + [f"regret@{at}" for at in ats] + ["target", "trials to target", "s/study"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [r["problem"], str(r["batch"]), r["contender"]]
            cells += [f"{r[f'regret@{at}']:.3f} ± {r[f'stderr@{at}']:.3f}" for at in ats]
            cells += [f"{r['target']:.3f}", "-" if r["trials_to_target"] is None else f"{r['trials_to_target']:g}",
                      f"{r['seconds_per_study']:.1f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += mean_table(rows, ats)
    if latency_rows:
        out += ["", "Suggestion latency, d=5, median (this machine, one process):", "",
                "| contender | observations | median ms |", "|---|---|---|"]
        out += [f"| {r['contender']} | {r['observations']} | {r['median_ms']:.1f} |" for r in latency_rows]
    if verdict_lines:
        out += ["", "Targets:", ""] + [f"- {line}" for line in verdict_lines]
    return "\n".join(out) + "\n"


def mean_table(rows: list[dict[str, Any]], ats: list[int]) -> list[str]:
    """Mean normalised regret over all problems, per batch size and contender."""
    out = ["| batch | contender | problems | " + " | ".join(f"mean regret@{at}" for at in ats) + " |",
           "|" + "---|" * (3 + len(ats))]
    for batch in sorted({r["batch"] for r in rows}):
        for contender in sorted({r["contender"] for r in rows if r["batch"] == batch}):
            mine = [r for r in rows if r["batch"] == batch and r["contender"] == contender]
            cells = [f"{statistics.fmean(r[f'regret@{at}'] for r in mine):.3f}" for at in ats]
            out.append(f"| {batch} | {contender} | {len(mine)} | " + " | ".join(cells) + " |")
    return out


def plot(scored: dict[str, Any], results: Path) -> list[str]:
    """One PNG per problem: mean normalised regret against trials, a panel per batch size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for problem_name, by_batch in scored["curves"].items():
        figure, axes = plt.subplots(1, len(by_batch), figsize=(5 * len(by_batch), 3.6), squeeze=False)
        for axis, (batch, contenders) in zip(axes[0], sorted(by_batch.items())):
            for contender, curve in sorted(contenders.items()):
                axis.plot(range(1, len(curve) + 1), [max(v, 1e-6) for v in curve], label=contender)
            axis.set_yscale("log")
            axis.set_title(f"{problem_name}, batch {batch}")
            axis.set_xlabel("trials")
            axis.set_ylabel("mean normalised regret")
            axis.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        figure.tight_layout()
        path = results / f"strategies-{problem_name}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path.name)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=DEFAULT, choices=sorted(PROBLEMS))
    parser.add_argument("--contenders", nargs="+", default=list(KUBETUNE + OPTUNA), choices=list(KUBETUNE + OPTUNA + ("sobol",)))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are first-seed .. first-seed+seeds-1; the defaults (0-19) are what the strategy was "
                             "tuned on, so confirm a change on others (e.g. --first-seed 100)")
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--latency-repeats", type=int, default=5, help="0 skips the latency measurement")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the harness, says nothing about quality")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--rescore", type=Path, metavar="JSON",
                        help="score the runs saved in a results JSON again (with its settings and latency) instead of running")
    args = parser.parse_args(argv)
    saved = json.loads(args.rescore.read_text()) if args.rescore else None
    if saved:
        for key in ("seeds", "first_seed", "budget", "batches", "problems", "contenders"):
            setattr(args, key, saved["settings"][key])
    if args.smoke:
        args.problems, args.seeds, args.budget, args.batches, args.latency_repeats = ["branin", "lr_like"], 2, 8, [1, 2], 0
        args.contenders = ["bayesian", "random", "grid"] + (["optuna-tpe"] if optuna_available() else [])
        args.workers = 1
    contenders = [c for c in args.contenders if not c.startswith("optuna") or optuna_available()]
    if len(contenders) < len(args.contenders):
        print("optuna is not installed (pip install -e '.[bench]'): running without the Optuna peers", file=sys.stderr)
    if "random" not in contenders:
        contenders.append("random")  # the normalisation needs it

    runs: list[dict[str, Any]] = saved["runs"] if saved else []
    if not args.latency_only and not saved:
        # Grid search only where it is a sensible choice: a grid over more than three parameters
        # spends a 100-trial budget on two values of each.
        jobs = [(c, p, seed, args.budget, batch) for p in args.problems for batch in args.batches
                for seed in range(args.first_seed, args.first_seed + args.seeds) for c in contenders
                if c != "grid" or len(PROBLEMS[p].parameters) <= 3]
        # Slow contenders first, so the pool does not end waiting for one long job.
        jobs.sort(key=lambda job: (job[0] != "optuna-gp", job[0] != "bayesian"))
        began = time.perf_counter()
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers, initializer=one_thread) as pool:
                runs = list(pool.map(run_one, jobs, chunksize=1))
        else:
            runs = [run_one(job) for job in jobs]
        print(f"{len(jobs)} studies in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    draws = saved["settings"].get("baseline_draws", 20_000) if saved else 2_000 if args.smoke else 20_000
    scored = (score(runs, args.problems, args.budget, draws=draws) if runs
              else {"curves": {}, "rows": [], "baselines": {}})
    latency_rows: list[dict[str, Any]] = saved["latency"] if saved else []
    if args.latency_repeats and not saved:
        lat_contenders = ["bayesian"] + [c for c in OPTUNA if optuna_available()]
        for observations in (100, 1000):
            latency_rows += latency(observations, args.latency_repeats, lat_contenders)
    verdict_lines = verdict(scored["rows"], args.budget, scored["baselines"]) if scored["rows"] else []
    settings = {"seeds": args.seeds, "first_seed": args.first_seed, "budget": args.budget, "batches": args.batches, "problems": args.problems,
                "contenders": contenders, "baseline_draws": draws}
    text = markdown(scored, args.budget, latency_rows, verdict_lines, settings)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    plots = plot(scored, args.results)
    (args.results / "strategies.md").write_text(text)
    (args.results / "strategies.json").write_text(json.dumps({
        "benchmark": "strategies", "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": settings, "rows": scored["rows"], "baselines": scored["baselines"], "curves": scored["curves"], "latency": latency_rows,
        "targets": verdict_lines, "plots": plots,
        "runs": [{k: r[k] for k in ("contender", "problem", "seed", "batch", "values", "seconds")} for r in runs],
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
