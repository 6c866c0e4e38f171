"""`kubetune run`: the study engine driving local trial processes.

The loop is level-based like the operator's: observe the trials, ask the engine for a plan,
apply its actions, wait for a process to exit or the next scrape, repeat. All state is in
the output folder, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

from kubetune import space
from kubetune.api.models import HyperparameterStudy, StudyStatus
from kubetune.engine import plan
from kubetune.local.executor import GPU_RESOURCE, LocalExecutor, now
from kubetune.local.store import StudyStore
from kubetune.trials import TrialRecord


# trials.csv is rewritten whole, so not after every trial of a 10,000-trial study.
SUMMARY_INTERVAL = 5.0


@dataclass
class RunResult:
    status: StudyStatus
    output: Path
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.status.phase == "Failed" else 0


class Progress:
    """One line per trial event, and on a terminal a live summary line that redraws in place."""

    def __init__(self, study: HyperparameterStudy, stream: TextIO = sys.stderr, live: Optional[bool] = None) -> None:
        self.study = study
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.status_line = ""
        self.started_at: dict[str, float] = {}

    def _clear(self) -> None:
        if self.live and self.status_line:
            self.stream.write("\r\033[K")

    def say(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        if self.live and self.status_line:
            self.stream.write(self.status_line)
        self.stream.flush()

    def event(self, kind: str, record: TrialRecord) -> None:
        if kind == "started":
            self.started_at[record.name] = time.monotonic()
            shown = " ".join(f"{k}={_short(v)}" for k, v in record.parameters.items())
            self.say(f"  started   {record.name}  {shown}")
            return
        started = self.started_at.pop(record.name, None)
        elapsed = f"  ({time.monotonic() - started:.1f}s)" if started is not None else ""
        objective = self.study.spec.objective
        names = [objective.metric, *objective.additional_metrics]
        metrics = " ".join(f"{m}={record.metrics[m]:.4g}" for m in names if m in record.metrics)
        if kind == "succeeded":
            self.say(f"  succeeded {record.name}  {metrics}{elapsed}")
        else:
            first_line = (record.message or "").splitlines()[0] if record.message else ""
            detail = f"{record.reason}: {first_line}" if first_line else (record.reason or "")
            self.say(f"  {kind:<9} {record.name}  {detail}{elapsed}")

    def update(self, status: StudyStatus) -> None:
        if not self.live:
            return
        counts = status.trials
        best = ""
        if status.best_trial is not None:
            best = f" | best {self.study.spec.objective.metric}={status.best_trial.objective:.4g} ({status.best_trial.name})"
        line = (f"[{status.phase.lower()}: {counts.running} running | {counts.succeeded} succeeded | "
                f"{counts.failed} failed | {counts.total - counts.stopped}/{self.study.spec.budget.max_trials}{best}]")
        if line != self.status_line:
            self._clear()
            self.status_line = line
            self.stream.write(line)
            self.stream.flush()

    def close(self) -> None:
        self._clear()
        self.status_line = ""
        self.stream.flush()


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else space.format_value(value)


def run_study(
    study: HyperparameterStudy,
    output: Path,
    *,
    command: Optional[Sequence[str]] = None,
    gpus: Optional[list[str]] = None,
    restart: bool = False,
    scrape_interval: float = 0.5,
    stop_grace: float = 10.0,
    progress: Optional[Progress] = None,
) -> RunResult:
    store = StudyStore(output, study)
    progress = progress or Progress(study)
    # Setup errors (a missing program, too few GPUs) surface before anything on disk changes.
    executor = LocalExecutor(study, store, command=command, gpus=gpus, scrape_interval=scrape_interval,
                             stop_grace=stop_grace, on_event=progress.event)
    if restart and output.exists():
        shutil.rmtree(output)
    store.prepare()
    executor.load()
    spec = study.spec
    resumed = len(executor.trials)
    progress.say(
        f"kubetune: study {study.metadata.name}: {spec.strategy.name} search, up to {spec.budget.max_trials} trials, "
        f"{spec.budget.parallel_trials} at a time; results in {output}"
        + (f" (resuming: {resumed} trials on record)" if resumed else "")
    )
    if executor.gpu_fallback:
        progress.say(f"kubetune: the trial template asks for {GPU_RESOURCE}, but no GPU is visible here; trials run on the CPU")
    elif not executor.gpu_need and executor.free_gpus:
        progress.say(f"kubetune: the trial template requests no {GPU_RESOURCE}, so trials get no GPU (as in a cluster)")
    status = store.read_status()
    summary_written = time.monotonic()
    with StopSignals() as stop:
        executor.wake_on(stop.fd)
        try:
            while not stop.requested:
                executor.poll()
                result = plan(study, executor.records(), now(), previous=status)
                status = result.status
                for action in result.stops():
                    executor.stop(action)
                for action in result.creates():
                    executor.create(action)
                if result.actions:
                    continue  # re-plan at once: the status must count what was just started or stopped
                store.write_status(status)
                if time.monotonic() - summary_written > SUMMARY_INTERVAL:
                    store.write_summary(executor.records())
                    summary_written = time.monotonic()
                progress.update(status)
                if result.finished or (status.phase == "Suspended" and executor.active == 0):
                    break
                executor.wait(timeout=1.0)
            if stop.requested:
                progress.say("kubetune: interrupted; stopping running trials (finished results are kept)")
                executor.stop_all("Interrupted", "the runner was interrupted; the trial's parameters run again on resume")
                status = interrupted_status(plan(study, executor.records(), now(), previous=status).status)
                store.write_status(status)
        finally:
            store.write_summary(executor.records())
            progress.close()
    return RunResult(status, output, stop.requested)


def interrupted_status(status: StudyStatus) -> StudyStatus:
    """An interrupted local study is suspended until the same command runs again."""
    status = status.model_copy(deep=True)
    status.phase = "Suspended"
    message = "the runner was interrupted; run the same command again to resume"
    for condition in status.conditions:
        if condition.type in ("Running", "Suspended"):
            condition.status = "True" if condition.type == "Suspended" else "False"
            condition.reason, condition.message = "Interrupted", message
    return status


class StopSignals:
    """Ctrl-C and SIGTERM ask the loop to stop at its next safe point.

    The handler only sets a flag and, through the wakeup fd, wakes the loop's select(). Raising
    KeyboardInterrupt instead could land anywhere, even in an at-fork hook while a trial starts,
    where Python swallows it and the interrupt is lost.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._write_fd)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self.fd)
        os.close(self._write_fd)


def summary(study: HyperparameterStudy, result: RunResult) -> str:
    status = result.status
    lines = []
    if result.interrupted:
        lines.append(f"study {study.metadata.name} interrupted; run the same command again to resume.")
    else:
        cond = next((c for c in status.conditions if c.type == status.phase), None)
        why = f": {cond.reason}" + (f" ({cond.message})" if cond and cond.message else "") if cond else ""
        lines.append(f"study {study.metadata.name} {status.phase}{why}")
    if status.lr_range_test is not None:
        test = status.lr_range_test
        picked = "no pick" if test.learning_rate is None else f"{test.parameter}={test.learning_rate:.3g}"
        lines.append(f"range test {test.trial}: {picked} ({test.rule}): {test.message}")
    for stage in status.stages:
        best_of = f", best {stage.best_trial} ({stage.best_objective:.4g})" if stage.best_trial else ""
        settled = ", ".join(f"{k}={space.format_value(v)}" for k, v in stage.result.items())
        lines.append(f"stage {stage.name} [{stage.phase}]: {stage.trials}/{stage.max_trials} trials{best_of}"
                     + (f"; settled {settled}" if settled else ""))
    c = status.trials
    lines.append(f"trials: {c.succeeded} succeeded, {c.failed} failed, {c.pruned} pruned, {c.stopped} stopped")
    best = status.best_trial
    if best is not None:
        lines.append(f"best trial {best.name}: {study.spec.objective.metric}={best.objective:.6g}")
        effective = best.effective_parameters or {}
        for name, value in best.parameters.items():
            scaled = f" (scaled to {space.format_value(effective[name])} at its batch size)" if name in effective and effective[name] != value else ""
            lines.append(f"  {name}: {space.format_value(value)}{scaled}")
        others = {k: v for k, v in best.metrics.items() if k != study.spec.objective.metric}
        if others:
            lines.append("  metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(others.items())))
    lines.append(f"results: {result.output}/ (status.json, trials.csv, trials/*/)")
    return "\n".join(lines)
