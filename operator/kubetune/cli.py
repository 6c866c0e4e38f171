"""The `kubetune` command line.

Exit codes: 0 success; 1 the study ran and failed; 2 the study or the command line is
invalid (with a message naming the field, never a traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from kubetune import __version__

EXIT_INVALID = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune",
        description="Kubernetes-native hyperparameter tuning. The same HyperparameterStudy file runs "
        "locally (kubetune run) or in a cluster (kubectl apply).",
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run a study on this machine, trials as local processes",
        description="Run a study locally: each trial is a process started from the trial template's "
        "command and args. Results go to the output folder; running the same command again "
        "resumes an interrupted or finished study (raise budget.maxTrials to continue one).",
    )
    run.add_argument("study", help="the study manifest (YAML)")
    run.add_argument("-o", "--output", type=Path, help="output folder (default: kubetune-runs/STUDY_NAME)")
    run.add_argument(
        "--command",
        help="run trials with this command instead of the container's command (args are still appended), "
        "for example --command 'python train.py'",
    )
    run.add_argument(
        "--gpus",
        help="GPU ids to hand out to trials that request nvidia.com/gpu, comma separated, or 'none' "
        "(default: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists)",
    )
    run.add_argument("--restart", action="store_true", help="discard earlier results in the output folder and start over")
    run.add_argument("--scrape-interval", type=float, default=0.5, metavar="SECONDS",
                     help="how often running trials' /metrics are read (default 0.5)")

    validate = commands.add_parser(
        "validate",
        help="check a study manifest and explain what is wrong",
        description="Validate a study manifest: exit 0 when it is valid, 2 with one line per problem otherwise.",
    )
    validate.add_argument("study", help="the study manifest (YAML)")

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (in the cluster, or against your kubeconfig)",
        description="Run the kopf operator that turns HyperparameterStudies into trials and Jobs.",
    )
    from kubetune.operator import add_arguments

    add_arguments(operator)

    crds = commands.add_parser(
        "crds",
        help="write the CustomResourceDefinitions generated from the API models",
        description="Generate the HyperparameterStudy and HyperparameterTrial CRDs from the API models.",
    )
    crds.add_argument("--output-dir", type=Path, default=Path("crds"), help="folder to write to (default: crds)")

    plot = commands.add_parser(
        "plot",
        help="draw a study's plots as PNG files",
        description="Write a study's plots as PNG files: optimization history, parallel coordinates, parameter "
        "importance, intermediate values and the learning-rate range test (each when the study has data for it). "
        "Needs matplotlib: pip install 'kubetune[plots]'.",
    )
    _source_arguments(plot)
    plot.add_argument("-o", "--output", type=Path,
                      help="folder for the PNG files (default: SOURCE/plots, or STUDY-plots for a cluster study)")

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML page about a study",
        description="Write one HTML file with a study's summary, stages, range test, plots and trials table. "
        "Plots are embedded; the page loads nothing from the network.",
    )
    _source_arguments(report)
    report.add_argument("-o", "--output", type=Path,
                        help="the HTML file (default: SOURCE/report.html, or STUDY-report.html for a cluster study)")

    simulate = commands.add_parser(
        "simulate",
        help="compare search strategies on synthetic problems",
        description="Run grid, random and Bayesian search on synthetic landscapes (no trials, no processes) "
        "and write best-so-far curves, where each strategy sampled, and a table.",
    )
    from kubetune.simulate import add_arguments as add_simulate_arguments

    add_simulate_arguments(simulate)
    return parser


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", type=Path, help="a local run's output folder (kubetune-runs/STUDY)")
    parser.add_argument("--study", metavar="NAME", help="read the HyperparameterStudy NAME from the cluster instead")
    parser.add_argument("-n", "--namespace", help="the study's namespace (default: the context's namespace)")
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "operator":
        from kubetune.operator import run

        return run(args)
    if args.command in ("plot", "report", "simulate"):
        return _inspect(args)
    if args.command == "crds":
        from kubetune.api.crd import write_crds

        for path in write_crds(args.output_dir):
            print(path)
        return 0

    from kubetune.api.validation import StudyInvalid, load_study_file

    try:
        study = load_study_file(args.study)
    except StudyInvalid as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_INVALID
    from kubetune.advice import advise

    advice = [f"advice: {a}" for a in advise(study)]
    if args.command == "validate":
        print("\n".join([f"{args.study}: valid HyperparameterStudy {study.metadata.name!r}"] + advice))
        return 0
    for line in advice:
        print(line, file=sys.stderr)
    return _run(args, study)


def _run(args: argparse.Namespace, study) -> int:
    from kubetune.local.executor import LocalSetupError
    from kubetune.local.runner import run_study, summary
    from kubetune.local.store import OutputConflict

    try:
        command = shlex.split(args.command) if args.command else None
    except ValueError as exc:
        print(f"kubetune: --command: {exc}", file=sys.stderr)
        return EXIT_INVALID
    gpus = None
    if args.gpus is not None:
        gpus = [] if args.gpus.strip().lower() == "none" else [g.strip() for g in args.gpus.split(",") if g.strip()]
    if args.scrape_interval <= 0:
        print("kubetune: --scrape-interval must be positive", file=sys.stderr)
        return EXIT_INVALID
    output = args.output or Path("kubetune-runs") / study.metadata.name
    try:
        result = run_study(study, output, command=command, gpus=gpus, restart=args.restart,
                           scrape_interval=args.scrape_interval)
    except (LocalSetupError, OutputConflict) as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(summary(study, result))
    return result.exit_code


def _inspect(args: argparse.Namespace) -> int:
    """plot, report and simulate: read a study (or simulate some), write files, print their paths."""
    from kubetune.plots import PlotsUnavailable
    from kubetune.report import SourceError
    from kubetune.simulate import SimulationError

    try:
        if args.command == "simulate":
            from kubetune.simulate import run_from_args

            return run_from_args(args)
        data = _load_source(args)
        if args.command == "plot":
            from kubetune.plots import write_plots

            paths = write_plots(data, args.output or (Path(f"{data.name}-plots") if args.study else args.source / "plots"))
            if not paths:
                print(f"kubetune: study {data.name} has no trial results to plot yet", file=sys.stderr)
            for path in paths:
                print(path)
            return 0
        from kubetune.report import write_report

        default = Path(f"{data.name}-report.html") if args.study else args.source / "report.html"
        print(write_report(data, args.output or default))
        return 0
    except (SourceError, PlotsUnavailable, SimulationError) as exc:
        print(f"kubetune {args.command}: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _load_source(args: argparse.Namespace):
    from kubetune.report import SourceError, load_cluster, load_folder

    if args.study and args.source:
        raise SourceError("give either an output folder or --study NAME, not both")
    if args.study:
        return load_cluster(args.study, args.namespace, args.context, args.kubeconfig)
    if args.source is None:
        raise SourceError("give a local run's output folder (kubetune-runs/STUDY) or --study NAME for a cluster study")
    if args.namespace or args.context or args.kubeconfig:
        raise SourceError("-n, --context and --kubeconfig apply to --study NAME (a cluster study), not to a folder")
    return load_folder(args.source)


if __name__ == "__main__":
    sys.exit(main())
