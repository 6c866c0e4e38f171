"""Trials as local processes: start, observe (exit codes, /metrics scrapes, the termination
file), stop, and hand out GPUs.

The executor turns the engine's actions into processes and processes back into
TrialRecords. It never decides what to run; that is the engine's job.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families

from kubetune import template
from kubetune.api.models import TERMINAL_TRIAL_PHASES, HyperparameterStudy, HyperparameterTrial, TrialStatus
from kubetune.engine import CreateTrial, StopTrial, timestamp
from kubetune.local.store import StudyStore, record_of
from kubetune.stoppers import diverged
from kubetune.trial import ENV_METRICS_ADDR, ENV_TERMINATION_PATH, METRIC_NAME, STEP_NAME
from kubetune.trials import Report, TrialRecord

GPU_RESOURCE = "nvidia.com/gpu"
WAKEUP = object()  # selector key data of the runner's wake-up fd
OUTPUT_TAIL_LINES = 8


class LocalSetupError(Exception):
    """The study cannot run on this machine as configured (a user error, not a bug)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect_gpus() -> list[str]:
    """GPU ids this machine offers: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in (v.strip() for v in visible.split(",")) if d and d != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpus_per_trial(study: HyperparameterStudy) -> int:
    resources = getattr(study.spec.trial_template.primary_container, "resources", None) or {}
    for kind in ("limits", "requests"):
        value = (resources.get(kind) or {}).get(GPU_RESOURCE)
        if value is not None:
            return int(value)
    return 0


def _search_path() -> str:
    """PATH for trials: the folder of this Python's scripts first, then the caller's, so that
    `python` and programs installed beside kubetune (kubetune-train) are the ones from the same
    environment, activated or not."""
    path = os.environ.get("PATH", os.defpath)
    scripts = str(Path(sys.executable).parent)
    return os.pathsep.join([scripts] + [p for p in path.split(os.pathsep) if p != scripts])


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A pre-exec hook that makes the child get SIGTERM when the runner dies (Linux only),
    so no trial keeps a GPU busy after its runner was killed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_DIE_WITH_PARENT = _parent_death_signal()


@dataclass
class Running:
    """A trial's live process and what has been observed of it."""

    trial: HyperparameterTrial
    process: subprocess.Popen
    port: int
    gpus: list[str]
    started: float
    log: object
    history: list[Report] = field(default_factory=list)
    last_scrape: float = 0.0


class LocalExecutor:
    def __init__(
        self,
        study: HyperparameterStudy,
        store: StudyStore,
        *,
        command: Optional[Sequence[str]] = None,
        gpus: Optional[list[str]] = None,
        scrape_interval: float = 0.5,
        stop_grace: float = 10.0,
        on_event: Callable[[str, TrialRecord], None] = lambda kind, record: None,
    ) -> None:
        self.study = study
        self.store = store
        self.command = list(command) if command else None
        self.scrape_interval = scrape_interval
        self.stop_grace = stop_grace
        self.on_event = on_event
        self.gpu_need = gpus_per_trial(study)
        self.free_gpus = list(detect_gpus() if gpus is None else gpus)
        self.gpu_fallback = self.gpu_need > 0 and not self.free_gpus
        if self.gpu_need and self.free_gpus and self.gpu_need > len(self.free_gpus):
            raise LocalSetupError(
                f"the trial template asks for {self.gpu_need} {GPU_RESOURCE} per trial, "
                f"but this machine has {len(self.free_gpus)} ({', '.join(self.free_gpus)})"
            )
        self.path = _search_path()
        self._check_command()
        self.trials: dict[str, HyperparameterTrial] = {}
        self.histories: dict[str, list[Report]] = {}
        self.running: dict[str, Running] = {}
        self.selector = selectors.DefaultSelector()
        self.pidfds = hasattr(os, "pidfd_open")
        threads = max(1, (os.cpu_count() or 1) // study.spec.budget.parallel_trials)
        self.default_threads = str(threads)

    def _check_command(self) -> None:
        """Fail before the first trial when the program cannot start at all."""
        container = self.study.spec.trial_template.primary_container
        command = self.command or container.command
        if not command:
            raise LocalSetupError(
                f"container {container.name!r} has no command: in a cluster the image's entrypoint runs, "
                f"locally kubetune needs one; pass --command, for example --command 'python train.py'"
            )
        program = command[0]
        if template.placeholders(program):
            return
        found = Path(program).is_file() if os.sep in program else shutil.which(program, path=self.path)
        if not found:
            raise LocalSetupError(
                f"cannot find the trial program {program!r} (container {container.name!r}) on this machine; "
                f"install it (the reference trainer: pip install 'kubetune[trainer]'), "
                f"or pass --command with a local one, for example --command 'python train.py'"
            )

    # -- the executor interface -----------------------------------------------------------

    def load(self) -> None:
        """Read existing trials from the output folder (resume). Unfinished ones were interrupted."""
        for trial, history in self.store.load_trials():
            name = trial.metadata.name
            if trial.status is None or trial.status.phase not in TERMINAL_TRIAL_PHASES:
                # Its process ended with the previous runner; the engine re-runs its parameters.
                trial.status = (trial.status or TrialStatus()).model_copy(update={
                    "phase": "Stopped", "reason": "Interrupted",
                    "message": "the runner stopped before this trial finished; its parameters run again",
                    "completion_time": timestamp(now()),
                })
                self.store.write_trial(trial)
            self.trials[name] = trial
            self.histories[name] = history

    def records(self) -> list[TrialRecord]:
        return [record_of(t, self.histories.get(n, ())) for n, t in self.trials.items()]

    def create(self, action: CreateTrial) -> None:
        trial = self.store.new_trial(action.name, action.spec(self.study))
        self.trials[action.name] = trial
        self.histories[action.name] = []
        self._start_pending()
        if trial.status.phase == "Pending":
            self.store.write_trial(trial)  # waiting for a GPU

    def stop(self, action: StopTrial) -> None:
        self._finish(action.name, action.phase, action.reason, action.message, terminate=True)

    def stop_all(self, reason: str, message: str) -> None:
        """Stop every active trial (Ctrl-C): all are signalled first, then awaited together."""
        for run in self.running.values():
            self._signal(run.process, signal.SIGTERM)
        for name in list(self.trials):
            if self.trials[name].status.phase in ("Pending", "Running"):
                self._finish(name, "Stopped", reason, message, terminate=True)

    @property
    def active(self) -> int:
        return sum(1 for t in self.trials.values() if t.status.phase in ("Pending", "Running"))

    # -- observing ----------------------------------------------------------------------

    def wake_on(self, fd: int) -> None:
        """Also return from wait() when `fd` becomes readable (the runner's signal pipe)."""
        self.selector.register(fd, selectors.EVENT_READ, WAKEUP)

    def wait(self, timeout: float) -> None:
        """Block until a trial process exits, `timeout` passes or a wake-up fd is written."""
        if not self.running:
            return
        deadline = min(timeout, self._next_scrape_in(), self._next_deadline_in())
        if self.pidfds:
            events = self.selector.select(max(0.0, deadline))
        else:  # no pidfd here: poll for exits at a short interval instead
            events = self.selector.select(max(0.0, min(deadline, 0.05)))
        for key, _ in events:
            if key.data is WAKEUP:
                try:
                    os.read(key.fd, 512)
                except BlockingIOError:
                    pass

    def poll(self) -> None:
        """Reap exited trials, enforce timeouts, scrape metrics, start trials waiting for GPUs."""
        clock = time.monotonic()
        timeout = self.study.spec.trial_template.timeout_seconds
        for name, run in list(self.running.items()):
            code = run.process.poll()
            if code is not None:
                self._exited(name, run, code)
            elif timeout is not None and clock - run.started > timeout:
                self._finish(name, "Failed", "DeadlineExceeded",
                             f"trial ran longer than timeoutSeconds={timeout}", terminate=True)
            elif clock - run.last_scrape >= self.scrape_interval:
                self._scrape(name, run)
        self._start_pending()

    def _next_scrape_in(self) -> float:
        clock = time.monotonic()
        return min((r.last_scrape + self.scrape_interval - clock for r in self.running.values()), default=1.0)

    def _next_deadline_in(self) -> float:
        timeout = self.study.spec.trial_template.timeout_seconds
        if timeout is None:
            return math.inf
        clock = time.monotonic()
        return min((r.started + timeout - clock for r in self.running.values()), default=math.inf)

    def _scrape(self, name: str, run: Running) -> None:
        run.last_scrape = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/metrics", timeout=0.5) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError):
            return  # not serving yet, or already gone: the termination file has the final word
        metrics: dict[str, float] = {}
        step: Optional[int] = None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == METRIC_NAME and sample.labels.get("trial") == name:
                    metrics[sample.labels["metric"]] = sample.value
                elif sample.name == STEP_NAME and sample.labels.get("trial") == name:
                    step = int(sample.value)
        if not metrics:
            return
        last = run.history[-1] if run.history else None
        if last is None or last.step != step or dict(last.metrics) != metrics:
            if last is not None and last.step == step:
                run.history[-1] = Report(step, metrics)
            else:
                run.history.append(Report(step, metrics))
            self.histories[name] = list(run.history)
            self._set_status(name, metrics=metrics, step=step, reported_steps=len(run.history))
            self.store.write_history(name, run.history)

    # -- process lifecycle ----------------------------------------------------------------

    def _start_pending(self) -> None:
        for name, trial in sorted(self.trials.items(), key=lambda kv: kv[1].spec.index):
            if trial.status.phase != "Pending" or name in self.running:
                continue
            if self.gpu_need and not self.gpu_fallback and len(self.free_gpus) < self.gpu_need:
                return  # trials start in index order as GPUs free up
            self._launch(trial)

    def _command(self, trial: HyperparameterTrial) -> list[str]:
        container = self.study.spec.trial_template.primary_container
        values = template.placeholder_values(self.study, trial.metadata.name, trial.spec)
        command, args, _ = template.render_container(container, values)
        if self.command:
            command = [template.substitute(t, values) for t in self.command]
        return list(command or []) + list(args or [])

    def _environment(self, trial: HyperparameterTrial, port: int, gpus: list[str]) -> dict[str, str]:
        container = self.study.spec.trial_template.primary_container
        values = template.placeholder_values(self.study, trial.metadata.name, trial.spec)
        env = dict(os.environ)
        env["PATH"] = self.path
        env.setdefault("OMP_NUM_THREADS", self.default_threads)
        env.update({name: value for name, value in template.render_container(container, values)[2]})
        env.update(template.trial_environment(self.study, trial.metadata.name, trial.spec, port))
        env[ENV_TERMINATION_PATH] = str(self.store.trial_dir(trial.metadata.name) / "termination.json")
        env["PYTHONUNBUFFERED"] = "1"
        # Exactly the GPUs handed out, none for a trial that requests none (as in a cluster).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env[ENV_METRICS_ADDR] = "127.0.0.1"
        return env

    def _launch(self, trial: HyperparameterTrial) -> None:
        name = trial.metadata.name
        directory = self.store.trial_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "termination.json").unlink(missing_ok=True)
        gpus: list[str] = []
        if self.gpu_need and not self.gpu_fallback:
            gpus, self.free_gpus = self.free_gpus[: self.gpu_need], self.free_gpus[self.gpu_need:]
        port = free_port()
        command = self._command(trial)
        attempts = trial.status.attempts + 1
        log = (directory / "output.log").open("a" if attempts > 1 else "w")
        log.write(f"# kubetune: attempt {attempts}: {shlex.join(command)}\n")
        log.flush()
        try:
            process = subprocess.Popen(  # the program is looked up on env's PATH
                command, env=self._environment(trial, port, gpus), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_DIE_WITH_PARENT,
            )
        except OSError as exc:
            log.close()
            self.free_gpus.extend(gpus)
            self._set_status(name, attempts=attempts, start_time=timestamp(now()))
            self._finish(name, "Failed", "StartError", f"cannot start {command[0]!r}: {exc.strerror}")
            return
        run = Running(trial, process, port, gpus, time.monotonic(), log)
        self.running[name] = run
        try:
            self.selector.register(os.pidfd_open(process.pid), selectors.EVENT_READ, name)
            self.pidfds = True
        except (AttributeError, OSError):
            self.pidfds = False  # old kernel or not Linux: wait() polls instead
        self._set_status(name, phase="Running", attempts=attempts, start_time=timestamp(now()),
                         reason=None, message=None, completion_time=None)
        self.on_event("started", record_of(self.trials[name]))

    def _exited(self, name: str, run: Running, code: int) -> None:
        final = self._read_termination(name)
        metrics = dict(self.trials[name].status.metrics)
        if final is not None:
            metrics.update(final.get("metrics", {}))
            history = [Report(h.get("step"), h.get("metrics", {})) for h in final.get("history", [])]
            if len(history) >= len(run.history):
                run.history = history
        self.histories[name] = list(run.history)
        self.store.write_history(name, run.history)
        step = run.history[-1].step if run.history else None
        trial = self.trials[name]
        trial.status = trial.status.model_copy(update={"metrics": metrics, "step": step,
                                                       "reported_steps": len(run.history)})
        # A range test reports its curve (lr, loss), not the objective.
        objective = "loss" if trial.spec.lr_range_test is not None else self.study.spec.objective.metric
        retries_left = trial.status.attempts <= self.study.spec.trial_template.retries
        divergence = None
        if code != 0 and trial.spec.lr_range_test is None:
            peers = [r for r in self.records() if not r.range_test and r.name != name]
            divergence = diverged(self.study, record_of(trial, run.history), peers)
        if divergence is not None:
            # The trainer saw its own divergence first; retrying the same parameters cannot help.
            tail = self._output_tail(name)
            last = tail.splitlines()[-1].strip() if tail else ""
            self._finish(name, "Pruned", divergence.reason,
                         f"{divergence.message}; the trial then ended with {_describe_exit(code)}"
                         + (f": {last}" if last else ""))
        elif code == 0 and objective in metrics:
            self._finish(name, "Succeeded", "Completed", "")
        elif code == 0:
            reported = ", ".join(sorted(metrics)) or "nothing"
            self._finish(name, "Failed", "NoMetrics",
                         f"the trial exited without reporting {objective} (it reported {reported}); "
                         f"call kubetune.trial.report({objective}=...)\n{self._output_tail(name)}")
        elif retries_left:
            self._release(name)
            self._set_status(name, phase="Pending", reason="Retrying",
                             message=f"attempt {trial.status.attempts} ended with {_describe_exit(code)}")
            self.on_event("retrying", record_of(trial))
        else:
            tail = self._output_tail(name)
            last = tail.splitlines()[-1].strip() if tail else ""
            self._finish(name, "Failed", "Error", f"{_describe_exit(code)}: {last}\n{tail}" if last else _describe_exit(code))

    def _finish(self, name: str, phase: str, reason: str, message: str, terminate: bool = False) -> None:
        run = self.running.get(name)
        if run is not None and terminate and run.process.poll() is None:
            self._terminate(run.process)
            final = self._read_termination(name)
            if final is not None:
                metrics = {**self.trials[name].status.metrics, **final.get("metrics", {})}
                self._set_status(name, metrics=metrics)
        self._release(name)
        self._set_status(name, phase=phase, reason=reason, message=message.strip() or None,
                         completion_time=timestamp(now()))
        self.on_event(phase.lower(), record_of(self.trials[name], self.histories.get(name, ())))

    def _release(self, name: str) -> None:
        run = self.running.pop(name, None)
        if run is None:
            return
        self.free_gpus.extend(run.gpus)
        run.log.close()
        for key in list(self.selector.get_map().values()):
            if key.data is not WAKEUP and key.data == name:
                self.selector.unregister(key.fileobj)
                os.close(key.fd)

    def _terminate(self, process: subprocess.Popen) -> None:
        """SIGTERM the trial's process group, then SIGKILL it after the grace period."""
        self._signal(process, signal.SIGTERM)
        try:
            process.wait(self.stop_grace)
        except subprocess.TimeoutExpired:
            self._signal(process, signal.SIGKILL)
            process.wait()

    @staticmethod
    def _signal(process: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _set_status(self, name: str, **changes: object) -> None:
        trial = self.trials[name]
        trial.status = trial.status.model_copy(update=changes)
        self.store.write_trial(trial)

    def _read_termination(self, name: str) -> Optional[dict]:
        path = self.store.trial_dir(name) / "termination.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _output_tail(self, name: str) -> str:
        path = self.store.trial_dir(name) / "output.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        attempt_starts = [i for i, line in enumerate(lines) if line.startswith("# kubetune: attempt")]
        lines = lines[attempt_starts[-1] + 1:] if attempt_starts else lines
        return "\n".join(lines[-OUTPUT_TAIL_LINES:])


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
