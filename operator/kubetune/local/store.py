"""The local body's source of truth: a study's output folder.

    OUTPUT/study.yaml                 the manifest as run (checked on resume)
    OUTPUT/status.json                the study status (same shape as the cluster's)
    OUTPUT/trials.csv                 one row per trial: parameters, phase, final metrics
    OUTPUT/trials/NAME/trial.json     a HyperparameterTrial object (spec + status)
    OUTPUT/trials/NAME/history.csv    every intermediate report (step, metrics)
    OUTPUT/trials/NAME/output.log     the trial's stdout and stderr
    OUTPUT/trials/NAME/termination.json  final metrics written by the trial SDK

Every file is replaced atomically (write, rename), so an interruption at any moment leaves
either the old or the new content, never a torn file. Finished trials are also fsync'ed:
their results survive a power loss, not just a crash of the runner.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from kubetune import scaling
from kubetune.api.models import (
    API_VERSION,
    IMMUTABLE_FIELDS,
    TERMINAL_TRIAL_PHASES,
    HyperparameterStudy,
    HyperparameterTrial,
    ObjectMeta,
    StudyStatus,
    TrialSpec,
    TrialStatus,
)
from kubetune.trials import Report, TrialRecord


class OutputConflict(Exception):
    """The output folder holds a different study; resuming would mix results."""


def atomic_write(path: Path, text: str, durable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes files private; results are meant to be shared
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:  # the rename itself must reach the disk too
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StudyStore:
    def __init__(self, root: Path, study: HyperparameterStudy) -> None:
        self.root = root
        self.study = study
        self._last_status: Optional[dict[str, Any]] = None

    def prepare(self) -> None:
        """Create the output folder, or check that it holds this study; refuse a different one."""
        root, study = self.root, self.study
        manifest = root / "study.yaml"
        if manifest.exists():
            previous = HyperparameterStudy.model_validate(yaml.safe_load(manifest.read_text()))
            before, now = previous.spec.immutable_fields(), study.spec.immutable_fields()
            changed = [name for name in IMMUTABLE_FIELDS if before.get(name) != now.get(name)]
            if changed:
                raise OutputConflict(
                    f"{root} holds results of study {previous.metadata.name!r} with different "
                    f"{', '.join('spec.' + name for name in changed)}; resuming would mix incomparable trials. "
                    f"Restore the original values, use another --output folder, or --restart to discard them."
                )
            if previous.metadata.name != study.metadata.name:
                raise OutputConflict(
                    f"{root} holds results of study {previous.metadata.name!r}, not {study.metadata.name!r}; "
                    f"use another --output folder"
                )
        atomic_write(manifest, yaml.safe_dump(study.to_wire(), sort_keys=False))

    # -- study --------------------------------------------------------------------------

    def read_status(self) -> Optional[StudyStatus]:
        path = self.root / "status.json"
        if not path.exists():
            return None
        return StudyStatus.model_validate(json.loads(path.read_text()))

    def write_status(self, status: StudyStatus) -> None:
        data = status.to_wire()
        if data != self._last_status:
            atomic_write(self.root / "status.json", json.dumps(data, indent=2) + "\n")
            self._last_status = data

    # -- trials -------------------------------------------------------------------------

    def trial_dir(self, name: str) -> Path:
        return self.root / "trials" / name

    def load_trials(self) -> list[tuple[HyperparameterTrial, list[Report]]]:
        trials_dir = self.root / "trials"
        if not trials_dir.is_dir():
            return []
        found = []
        for path in sorted(trials_dir.glob("*/trial.json")):
            trial = HyperparameterTrial.model_validate(json.loads(path.read_text()))
            found.append((trial, self.read_history(trial.metadata.name)))
        return sorted(found, key=lambda t: t[0].spec.index)

    def write_trial(self, trial: HyperparameterTrial) -> None:
        finished = trial.status is not None and trial.status.phase in TERMINAL_TRIAL_PHASES
        atomic_write(self.trial_dir(trial.metadata.name) / "trial.json", json.dumps(trial.to_wire(), indent=2) + "\n",
                     durable=finished)

    def new_trial(self, name: str, spec: TrialSpec) -> HyperparameterTrial:
        """A Pending trial object; written when it starts (or waits for a GPU)."""
        trial = HyperparameterTrial(
            apiVersion=API_VERSION,
            kind="HyperparameterTrial",
            metadata=ObjectMeta(name=name, labels={"kubetune.io/study": self.study.metadata.name}),
            spec=spec,
            status=TrialStatus(),
        )
        return trial

    def write_history(self, name: str, history: Iterable[Report]) -> None:
        history = list(history)
        columns = sorted({k for r in history for k in r.metrics})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["step", *columns])
        for report in history:
            writer.writerow(["" if report.step is None else report.step, *(report.metrics.get(c, "") for c in columns)])
        atomic_write(self.trial_dir(name) / "history.csv", out.getvalue())

    def read_history(self, name: str) -> list[Report]:
        path = self.trial_dir(name) / "history.csv"
        if not path.exists():
            return []
        reports = []
        with path.open() as handle:
            for row in csv.DictReader(handle):
                step = row.pop("step")
                reports.append(Report(int(step) if step else None, {k: float(v) for k, v in row.items() if v != ""}))
        return reports

    def write_summary(self, records: Iterable[TrialRecord]) -> None:
        """trials.csv: one row per trial, for spreadsheets and pandas."""
        records = sorted(records, key=lambda r: r.index)
        params = [p.name for p in self.study.spec.parameters]
        metrics = sorted({k for r in records for k in r.metrics})
        out = io.StringIO()
        writer = csv.writer(out)
        # A metric named like a parameter gets a prefix, so every column name is unique.
        metric_columns = [f"metric:{m}" if m in params else m for m in metrics]
        # With lrScaling, the scaled learning rate each trial ran with has its own column.
        effective = {r.name: scaling.effective_parameters(self.study, r.parameters) or {} for r in records}
        scaled = [p for p in params if any(effective[r.name].get(p, r.parameters.get(p)) != r.parameters.get(p)
                                           for r in records)]
        writer.writerow(["trial", "index", "phase", *params, *(f"scaled:{p}" for p in scaled), *metric_columns,
                         "reason", "message"])
        for r in records:
            writer.writerow([
                r.name, r.index, r.phase,
                *(r.parameters.get(p, "") for p in params),
                *(effective[r.name].get(p, r.parameters.get(p, "")) for p in scaled),
                *(r.metrics.get(m, "") for m in metrics),
                r.reason or "", (r.message or "").replace("\n", " | "),
            ])
        atomic_write(self.root / "trials.csv", out.getvalue())


def record_of(trial: HyperparameterTrial, history: Iterable[Report] = ()) -> TrialRecord:
    status = trial.status or TrialStatus()
    return TrialRecord(
        name=trial.metadata.name,
        index=trial.spec.index,
        parameters=trial.spec.parameters,
        phase=status.phase,
        metrics=dict(status.metrics),
        history=tuple(history),
        reason=status.reason,
        message=status.message,
        rerun_of=trial.spec.rerun_of,
        stage=trial.spec.stage,
        range_test=trial.spec.lr_range_test is not None,
    )
