"""The local runner's own overhead per trial, side by side with a bare loop and Optuna.

Every contender runs the same trivial trial, a `sh` one-liner that stamps its start and end
times and writes its result, one trial at a time. The gap between one trial's end stamp and
the next one's start stamp is everything the tuner does between trials: noticing the exit,
recording the result, choosing the next parameters, starting the process.

    make bench-runner            # or: python benchmarks/bench_runner.py --trials 200

Contenders:
  bare loop   subprocess.run in a for loop: the floor (process start and exit only)
  kubetune    `kubetune run` on a study with the trial template below (random search)
  optuna      Optuna 5's ask/tell with the same subprocess per trial, in memory and with its
              durable journal-file storage (kubetune persists every trial to its output folder)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"
# Stamps start and end (ns) into the trial's folder and reports loss through the termination
# file, the same way the SDK does, without a Python start-up that would dwarf the overhead.
TRIAL_SCRIPT = (
    'start=$(date +%s%N); d=$(dirname "$KUBETUNE_TERMINATION_PATH"); '
    'printf \'{"metrics": {"loss": %s}}\' "$1" > "$KUBETUNE_TERMINATION_PATH"; '
    'echo "$start $(date +%s%N)" > "$d/stamps"'
)


def gaps(stamps: list[tuple[int, int]]) -> list[float]:
    """Milliseconds from each trial's end to the next trial's start."""
    return [(b_start - a_end) / 1e6 for (_, a_end), (b_start, _) in zip(stamps, stamps[1:])]


def bare_loop(trials: int, workdir: Path) -> tuple[list[float], float]:
    stamps = []
    began = time.perf_counter()
    for i in range(trials):
        trial_dir = workdir / f"bare-{i}"
        trial_dir.mkdir()
        env = {**os.environ, "KUBETUNE_TERMINATION_PATH": str(trial_dir / "termination.json")}
        subprocess.run(["sh", "-c", TRIAL_SCRIPT, "sh", str(i * 0.001)], env=env, check=True)
        stamps.append(tuple(map(int, (trial_dir / "stamps").read_text().split())))
    return gaps(stamps), time.perf_counter() - began


def kubetune_run(trials: int, workdir: Path) -> tuple[list[float], float]:
    study = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "HyperparameterStudy",
        "metadata": {"name": "bench"},
        "spec": {
            "objective": {"metric": "loss"},
            "parameters": [{"name": "x", "type": "float", "min": 0.0, "max": 1.0}],
            "strategy": {"name": "random", "seed": 1},
            "budget": {"maxTrials": trials, "parallelTrials": 1},
            "trialTemplate": {"template": {"spec": {"containers": [
                {"name": "trial", "command": ["sh", "-c", TRIAL_SCRIPT, "sh", "${params.x}"]}]}}},
        },
    }
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    output = workdir / "kubetune-out"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kubetune.cli", "run", str(path), "-o", str(output)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - began
    stamps = []
    for i in range(trials):
        stamps.append(tuple(map(int, (output / "trials" / f"bench-{i:04d}" / "stamps").read_text().split())))
    return gaps(stamps), elapsed


def optuna_run(trials: int, workdir: Path, journal: bool) -> tuple[list[float], float] | None:
    try:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The journal file is Optuna's durable local storage, the fair match for kubetune's output folder.
    storage = JournalStorage(JournalFileBackend(str(workdir / "optuna.journal"))) if journal else None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), storage=storage)
    stamps = []
    began = time.perf_counter()
    for i in range(trials):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial_dir = workdir / f"optuna-{journal}-{i}"
        trial_dir.mkdir()
        env = {**os.environ, "KUBETUNE_TERMINATION_PATH": str(trial_dir / "termination.json")}
        subprocess.run(["sh", "-c", TRIAL_SCRIPT, "sh", repr(x)], env=env, check=True)
        loss = json.loads((trial_dir / "termination.json").read_text())["metrics"]["loss"]
        study.tell(trial, loss)
        stamps.append(tuple(map(int, (trial_dir / "stamps").read_text().split())))
    return gaps(stamps), time.perf_counter() - began


def summarise(name: str, result: tuple[list[float], float], trials: int) -> dict:
    gap, elapsed = result
    return {
        "contender": name,
        "trials": trials,
        "median_gap_ms": round(statistics.median(gap), 2),
        "p90_gap_ms": round(statistics.quantiles(gap, n=10)[-1], 2),
        "max_gap_ms": round(max(gap), 2),
        "wall_per_trial_ms": round(elapsed / trials * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows.append(summarise("bare loop", bare_loop(args.trials, workdir), args.trials))
        rows.append(summarise("kubetune", kubetune_run(args.trials, workdir), args.trials))
        for journal in (False, True):
            optuna_result = optuna_run(args.trials, workdir, journal)
            if optuna_result is not None:
                name = "optuna ask/tell, journal file" if journal else "optuna ask/tell, in memory"
                rows.append(summarise(name, optuna_result, args.trials))
    columns = ["contender", "trials", "median_gap_ms", "p90_gap_ms", "max_gap_ms", "wall_per_trial_ms"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    floor = rows[0]["median_gap_ms"]
    ours = rows[1]["median_gap_ms"]
    print(f"\nkubetune's own overhead per trial (median gap minus the bare loop's): {ours - floor:.2f} ms; target < 50 ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runner.json").write_text(json.dumps({
        "benchmark": "runner", "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rows": rows, "kubetune_overhead_ms": round(ours - floor, 2),
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
