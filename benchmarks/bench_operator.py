"""The kopf operator's reaction time, API traffic and memory, against the emulated API server.

The real operator (`kubetune.operator.handlers` under kopf, in a thread of this process, as the
operator tests run it) talks HTTP to the tests' Kubernetes API emulator (tests/support/emulator.py),
which runs in a separate process, so that the operator's memory is this process's and the two do
not share one interpreter lock. Nothing runs trials: this script plays the Job controller and the
kubelet with the operator tests' helpers (tests/test_operator.py), as those tests do.

    make bench-operator                 # or: python benchmarks/bench_operator.py [--quick]

What it measures (issue #3):
  study -> first Job    from the API server storing a new study to it storing the study's first
                        Job (both stamped inside the emulator process, on one monotonic clock)
  pod done -> next Job  parallelTrials=1: from the API server storing the finished trial's Job
                        status (Complete; its Pod was set Succeeded with the trial's termination
                        message just before) to it storing the next trial's Job
  API requests/trial    every request the operator made (kopf's "kopf/..." and the Kubernetes
                        client's "OpenAPI-Generator/..." User-Agents) over that sequential study,
                        from its creation to its Succeeded status, divided by its trials; watches
                        are long-lived and were opened before, so they are not in the count
  memory                RSS of the operator's process with --memory-studies studies of
                        --memory-parallel running trials each (1,000 live trials by default: Jobs
                        created, Pods Running, trials observed Running), and its growth from the
                        idle operator; the harness's own imports (kmock, pytest, requests) are
                        measured and subtracted, the emulator's storage is in the other process

Each phase (memory, then latency) runs in a fresh process with a fresh emulator. The emulator
carries one fix to kmock 0.8 (tests/support/emulator.py, constant_time_request_matching):
unpatched, kmock's routing costs time linear in the number of requests served so far, so the
emulator, not the operator, dominated every figure (measured here: 10-60 ms per request instead
of 1-5 ms, and 48 s instead of 1.8 s for the --quick run's 100 Jobs).

Strategy: `random` (an operator benchmark; the strategies' own suggestion times are measured by
bench_strategies.py). Logging is left at Python's default (WARNING): the real operator logs
kopf's INFO lines, which costs a little more.

Peer context, not measured (Katib cannot run here, and no numbers are quoted): Katib's
documented design runs one suggestion Deployment (a gRPC service) per Experiment, which the
Experiment controller calls for new Trials, and injects a metrics-collector sidecar into every
trial Pod that reports to the katib-db-manager (backed by MySQL). Its per-experiment cost is
therefore a pod, where kubetune's is a coroutine in one operator process.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "tests"))  # support.emulator and the operator tests' kubelet helpers

STUDY_LABEL = "kubetune.io/study"
TARGET_MS = 500.0
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


def rss_kib(pid: str | int = "self") -> int:
    """Resident set size from /proc (no psutil)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/status")


# --------------------------------------------------------------------------------------------
# The API server, in its own process.
# --------------------------------------------------------------------------------------------

def serve_emulator(conn, events, workdir: str) -> None:
    """Child process: the emulator, stamping every change the benchmark waits for.

    Each stored change of a study, trial or Job goes to `events` as (monotonic time, plural,
    type, name, study label, detail) right after the server stored it (before any watcher sees
    it). Commands come on `conn`: ("count",), ("requests", start), ("rss",), ("errors",), ("stop",).
    """
    from support.emulator import ApiServerEmulator, EmulatedCluster
    original = ApiServerEmulator._record

    async def record(self, resource, type_, old, new):
        await original(self, resource, type_, old, new)
        plural = resource.plural
        if plural not in ("jobs", "hyperparametertrials", "hyperparameterstudies"):
            return
        stamp = time.monotonic()
        meta = new["metadata"]
        study = (meta.get("labels") or {}).get(STUDY_LABEL)
        if plural == "jobs":
            detail: Any = new if type_ == "ADDED" else [c.get("type") for c in (new.get("status") or {}).get("conditions") or []]
        else:
            detail = (new.get("status") or {}).get("phase")
        events.put((stamp, plural, type_, meta["name"], study, detail))

    # Every request's arrival and answer times, for diagnosis (--timeline).
    timeline: list[tuple] = []
    serve = ApiServerEmulator.__call__

    async def call(self, raw_request):
        arrived = time.monotonic()
        try:
            return await serve(self, raw_request)
        finally:
            timeline.append((arrived, time.monotonic(), raw_request.headers.get("User-Agent", ""),
                             raw_request.method, raw_request.path_qs))

    # The emulator is an attrs class with slots: wrap the methods on the class (this process
    # serves nothing else).
    ApiServerEmulator._record = record
    ApiServerEmulator.__call__ = call
    cluster = EmulatedCluster(Path(workdir)).start()
    emulator = cluster.emulator
    conn.send({"url": cluster.url, "kubeconfig": str(cluster.kubeconfig), "pid": os.getpid()})
    while True:
        command, *args = conn.recv()
        if command == "count":
            conn.send(len(emulator._requests))
        elif command == "requests":
            conn.send([
                (r.headers.get("User-Agent", ""), r.method.value.upper(), r.action.name if r.action else None,
                 r.resource.plural if r.resource else None, r.subresource, r.params.get("watch") == "true")
                for r in list(emulator._requests)[args[0]:]])
        elif command == "bodies":  # what each request sent
            conn.send([(r.headers.get("User-Agent", ""), r.method.value.upper(), str(r.url.path), r.text)
                       for r in list(emulator._requests)[args[0]:]])
        elif command == "timeline":
            conn.send(timeline[args[0]:])
        elif command == "rss":
            conn.send(rss_kib())
        elif command == "errors":
            conn.send([repr(e) for e in cluster.server_errors])
        elif command == "stop":
            cluster.stop()
            conn.send(None)
            return


class Board:
    """What the emulator reported, by object, with a condition to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.study_added: dict[str, float] = {}
        self.study_phase: dict[str, str] = {}
        self.jobs: dict[str, tuple[float, dict]] = {}
        self.jobs_by_study: dict[str, list[str]] = collections.defaultdict(list)
        self.job_complete: dict[str, float] = {}
        self.trial_phase: dict[str, str] = {}

    def feed(self, event: tuple) -> None:
        stamp, plural, type_, name, study, detail = event
        with self.cond:
            if plural == "hyperparameterstudies":
                self.study_added.setdefault(name, stamp)
                if detail:
                    self.study_phase[name] = detail
            elif plural == "hyperparametertrials":
                if detail:
                    self.trial_phase[name] = detail
            elif type_ == "ADDED":
                self.jobs[name] = (stamp, detail)
                self.jobs_by_study[study].append(name)
            elif type_ == "MODIFIED" and "Complete" in detail:
                self.job_complete.setdefault(name, stamp)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        with self.cond:
            result = self.cond.wait_for(predicate, timeout)
        if not result:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        return result


class Emulator:
    """The emulator process, seen from here."""

    def __init__(self, workdir: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.events = ctx.Queue()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve_emulator, args=(child, self.events, str(workdir)),
                                   name="kube-api-emulator", daemon=True)
        self.process.start()
        deadline = time.monotonic() + 60
        while not self.conn.poll(0.1):
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator process did not start")
        info = self.conn.recv()
        self.url, self.kubeconfig, self.pid = info["url"], info["kubeconfig"], info["pid"]
        self.board = Board()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="emulator-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            event = self.events.get()
            if event is None:
                return
            self.board.feed(event)

    def call(self, *command: Any) -> Any:
        with self._lock:
            self.conn.send(command)
            return self.conn.recv()

    def stop(self) -> None:
        errors = self.call("errors")
        self.call("stop")
        self.events.put(None)
        self.process.join(10)
        if errors:
            raise RuntimeError(f"the API emulator failed while serving: {errors}")


def remote_cluster(emulator: Emulator, workdir: Path):
    """The tests' EmulatedCluster HTTP helpers, pointed at the emulator in the other process."""
    from support.emulator import EmulatedCluster

    class RemoteCluster(EmulatedCluster):
        RESOURCES = {"Namespace": "v1/namespaces", "Pod": "v1/pods",
                     "HyperparameterStudy": "kubetune.io/v1alpha1/hyperparameterstudies"}

        def create(self, obj, namespace=None):
            resource = self.RESOURCES[obj["kind"]]
            if obj["kind"] != "Namespace":
                namespace = namespace or obj["metadata"].get("namespace") or "default"
            return self.request("POST", self.path(resource, namespace), obj)

    cluster = RemoteCluster(workdir)
    cluster.url, cluster.kubeconfig = emulator.url, Path(emulator.kubeconfig)
    return cluster


class Harness:
    """An emulator process and the real operator in a thread of this process."""

    def __init__(self, workdir: Path, resync: float) -> None:
        import kopf

        from kubetune.operator.reconcile import OperatorConfig
        from support.emulator import KopfThread
        from test_operator import NS

        self.workdir = workdir
        self.emulator = Emulator(workdir)
        self.board = self.emulator.board
        self._local = threading.local()
        self.cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        os.environ["KUBECONFIG"] = self.emulator.kubeconfig
        self.operator = KopfThread("kubetune.operator.handlers", server=self.emulator.url, namespaces=[NS],
                                   memo=kopf.Memo(config=OperatorConfig(resync_seconds=resync)))

    @property
    def cluster(self):
        """One HTTP session per thread (the kubelet is played from several)."""
        if not hasattr(self._local, "cluster"):
            self._local.cluster = remote_cluster(self.emulator, self.workdir)
        return self._local.cluster

    def start_operator(self) -> None:
        self.operator.start()
        # KopfThread only waits for kopf's watches when the emulator is in its own process;
        # here, wait for the first watch of each resource the operator needs.
        wanted = {"hyperparameterstudies", "hyperparametertrials", "jobs", "pods"}
        deadline = time.monotonic() + 30
        while True:
            watched = {plural for agent, _, _, plural, _, watch in self.emulator.call("requests", 0)
                       if watch and agent.startswith("kopf/")}
            if wanted <= watched:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"kopf watches only {sorted(watched)}")
            time.sleep(0.05)

    def create_study(self, name: str, max_trials: int, parallel: int) -> None:
        from test_operator import study

        manifest = study(name, strategy={"name": "random", "seed": 1},
                         budget={"maxTrials": max_trials, "parallelTrials": parallel})
        self.cluster.create(manifest)

    def wait_quiet(self, seconds: float = 0.5, timeout: float = 30) -> int:
        """Wait until the operator has made no request for `seconds`; the request count then."""
        deadline = time.monotonic() + timeout
        last, since = self.emulator.call("count"), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.emulator.call("count")
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= seconds:
                return count
        return last

    def stop(self) -> None:
        try:
            self.operator.stop()
        finally:
            self.emulator.stop()


# --------------------------------------------------------------------------------------------
# The measurements.
# --------------------------------------------------------------------------------------------

def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"n": len(values), "median_ms": ms(statistics.median(values)), "p90_ms": ms(p90),
            "max_ms": ms(max(values)), "min_ms": ms(min(values))}


def first_job(h: Harness, name: str, timeout: float = 30) -> float:
    """Seconds from the server storing study `name` to it storing the study's first Job."""
    board = h.board
    board.wait(lambda: name in board.study_added and board.jobs_by_study.get(name), timeout, f"a Job of {name}")
    with board.cond:
        return board.jobs[board.jobs_by_study[name][0]][0] - board.study_added[name]


def study_to_first_job(h: Harness, count: int) -> tuple[list[float], float]:
    """Cold (the first study after the operator started) and then `count` warm measurements."""
    h.create_study("l1-cold", 1, 1)
    cold = first_job(h, "l1-cold")
    warm = []
    for i in range(count):
        name = f"l1-{i:03d}"
        h.create_study(name, 1, 1)
        warm.append(first_job(h, name))
    return warm, cold


def pod_done_to_next_job(h: Harness, trials: int) -> tuple[list[float], dict]:
    """One study of `trials` trials, one at a time; every gap between a Job stored Complete and
    the next Job stored, and the operator's requests over the whole study."""
    from test_operator import loss_of, succeed

    board, name = h.board, "seq"
    start = h.wait_quiet()
    h.create_study(name, trials, 1)
    gaps, done_at = [], None
    for i in range(trials):
        job_name = board.wait(lambda: len(board.jobs_by_study.get(name, ())) > i and board.jobs_by_study[name][i],
                              30, f"Job {i} of {name}")
        created, job = board.jobs[job_name]
        if done_at is not None:
            gaps.append(created - done_at)
        succeed(h.cluster, job, {"loss": loss_of(job), "val_accuracy": 0.9})
        done_at = board.wait(lambda: board.job_complete.get(job_name), 30, f"{job_name} Complete")
    board.wait(lambda: board.study_phase.get(name) == "Succeeded", 30, f"{name} Succeeded")
    h.wait_quiet()
    requests = count_operator_requests(h.emulator.call("requests", start), trials)
    requests["repeated"] = repeated_writes(h.emulator.call("bodies", start))
    return gaps, requests


def repeated_writes(log: list[tuple]) -> dict[str, int]:
    """Operator writes that repeated an earlier one: a status PATCH with the same body as the
    last one to that object, a create of a name already created (answered 409 AlreadyExists),
    an Event with the same reason and message on the same object."""
    last_patch: dict[str, str] = {}
    created: set[tuple[str, str]] = set()
    events: set[tuple] = set()
    counts = collections.Counter()
    for agent, method, path, text in log:
        if not agent.startswith(OPERATOR_AGENTS) or not text:
            continue
        body = json.loads(text)
        if method == "PATCH":
            if last_patch.get(path) == text:
                parts = path.split("/")
                kind = f"{parts[-3]}/status" if parts[-1] == "status" else parts[-2]
                counts[f"same PATCH again ({kind})"] += 1
            last_patch[path] = text
        elif method == "POST" and path.endswith("/events"):
            key = ((body.get("involvedObject") or {}).get("name"), body.get("reason"), body.get("message"))
            if key in events:
                counts["same Event again"] += 1
            events.add(key)
        elif method == "POST":
            key = (path, (body.get("metadata") or {}).get("name"))
            if key in created:
                counts[f"create again ({path.rsplit('/', 1)[-1]})"] += 1
            created.add(key)
    return dict(sorted(counts.items()))


def count_operator_requests(log: list[tuple], trials: int) -> dict:
    by_client: dict[str, int] = collections.Counter()
    by_call: dict[str, int] = collections.Counter()
    helpers = watches = 0
    for agent, method, _, plural, subresource, watch in log:
        client = next((a.rstrip("/") for a in OPERATOR_AGENTS if agent.startswith(a)), None)
        if client is None:
            helpers += 1
            continue
        if watch:
            watches += 1
            continue
        by_client[client] += 1
        by_call[f"{client} {method} {plural}{'/' + subresource if subresource else ''}"] += 1
    total = sum(by_client.values())
    return {
        "trials": trials, "total": total, "per_trial": round(total / trials, 2),
        "by_client_per_trial": {k: round(v / trials, 2) for k, v in sorted(by_client.items())},
        "by_call_per_trial": {k: round(v / trials, 2) for k, v in sorted(by_call.items())},
        "by_call_total": dict(sorted(by_call.items())),
        "watch_reconnects": watches, "helper_requests_left_out": helpers,
    }


def play_running(h: Harness, job_name: str) -> None:
    """Create the Job's Pod, Running; then forget the Job's body (harness memory, not the operator's)."""
    from test_operator import run_pod

    board = h.board
    run_pod(h.cluster, board.jobs[job_name][1])
    with board.cond:
        board.jobs[job_name] = (board.jobs[job_name][0], None)


def live_trials_memory(h: Harness, studies: int, parallel: int, rss: dict[str, int]) -> dict:
    """`studies` studies of `parallel` running trials each; the operator's RSS once all are live."""
    board = h.board
    total = studies * parallel
    names = [f"mem-{i:03d}" for i in range(studies)]
    rss["idle"] = rss_kib()
    began = time.monotonic()
    for name in names:
        h.create_study(name, parallel, parallel)
    played: set[str] = set()
    futures = []
    with ThreadPoolExecutor(4, thread_name_prefix="kubelet") as kubelet:
        while len(played) < total:
            board.wait(lambda: sum(len(board.jobs_by_study.get(n, ())) for n in names) > len(played),
                       120, f"Jobs ({len(played)} of {total} seen)")
            with board.cond:
                fresh = [j for n in names for j in board.jobs_by_study.get(n, ()) if j not in played]
            for job_name in fresh:
                played.add(job_name)
                futures.append(kubelet.submit(play_running, h, job_name))
    for future in futures:
        future.result()  # a failure to play the kubelet is the harness's, and must not pass silently
    with board.cond:
        first_study = min(board.study_added[n] for n in names)
        last_job = max(board.jobs[j][0] for n in names for j in board.jobs_by_study[n])
    board.wait(lambda: sum(1 for n in names for j in board.jobs_by_study[n]
                           if board.trial_phase.get(j) == "Running") == total,
               300, f"{total} trials observed Running")
    live_at = time.monotonic()
    h.wait_quiet(1.0)
    rss["live"] = rss_kib()
    return {
        "studies": studies, "parallel_trials": parallel, "live_trials": total,
        "all_jobs_created_s": round(last_job - first_study, 2),
        "all_trials_running_s": round(live_at - began, 2),
        "emulator_rss_mib": round(h.emulator.call("rss") / 1024, 1),
    }


# --------------------------------------------------------------------------------------------

def run_phase(args: argparse.Namespace) -> int:
    """One phase, in this process: the operator in a thread here, the emulator in a child."""
    rss: dict[str, int] = {"python": rss_kib()}
    import kopf  # noqa: F401 - what a real operator process imports
    import kubernetes  # noqa: F401
    import kubetune.operator.handlers  # noqa: F401
    rss["operator_imports"] = rss_kib()
    import support.emulator  # noqa: F401 - the harness's own imports (kmock, pytest, requests)
    import test_operator  # noqa: F401
    rss["harness_imports"] = rss_kib()
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp), args.resync_seconds)
        try:
            h.start_operator()
            if args.phase == "memory":
                result: dict[str, Any] = {"memory": live_trials_memory(h, args.memory_studies, args.memory_parallel, rss),
                                          "rss_kib": rss}
            else:
                first, cold = study_to_first_job(h, args.studies)
                gaps, requests = pod_done_to_next_job(h, args.trials)
                result = {"first": first, "cold": cold, "gaps": gaps, "requests": requests}
        finally:
            h.stop()
    Path(args.phase_output).write_text(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20, help="studies timed from creation to first Job")
    parser.add_argument("--trials", type=int, default=30, help="trials of the sequential study (parallelTrials=1)")
    parser.add_argument("--memory-studies", type=int, default=100)
    parser.add_argument("--memory-parallel", type=int, default=10, help="parallelTrials (and maxTrials) of each")
    parser.add_argument("--resync-seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 studies, 8 trials, 10x10 live trials")
    parser.add_argument("--output", default=str(RESULTS / "operator.json"))
    parser.add_argument("--phase", choices=("memory", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--phase-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.studies, args.trials, args.memory_studies, args.memory_parallel = 5, 8, 10, 10

    if args.phase:
        return run_phase(args)

    # Each phase in a fresh process (a fresh heap for the memory figure, and no leftovers of
    # 1,000 trials under the latency figures), each with its own emulator process.
    began = time.monotonic()
    results = {}
    for phase in ("memory", "latency"):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            argv = [sys.executable, __file__, "--phase", phase, "--phase-output", out.name,
                    "--studies", str(args.studies), "--trials", str(args.trials),
                    "--memory-studies", str(args.memory_studies), "--memory-parallel", str(args.memory_parallel),
                    "--resync-seconds", str(args.resync_seconds)]
            subprocess.run(argv, check=True)
            results[phase] = json.loads(Path(out.name).read_text())
    rss, memory = results["memory"]["rss_kib"], results["memory"]["memory"]
    first, cold = results["latency"]["first"], results["latency"]["cold"]
    gaps, requests = results["latency"]["gaps"], results["latency"]["requests"]

    harness = rss["harness_imports"] - rss["operator_imports"]
    memory.update({
        "operator_rss_mib": round((rss["live"] - harness) / 1024, 1),
        "process_rss_mib": round(rss["live"] / 1024, 1),
        "harness_imports_mib": round(harness / 1024, 1),
        "operator_imports_mib": round((rss["operator_imports"] - rss["python"]) / 1024, 1),
        "idle_operator_rss_mib": round((rss["idle"] - harness) / 1024, 1),
        "growth_mib": round((rss["live"] - rss["idle"]) / 1024, 1),
        "growth_per_live_trial_kib": round((rss["live"] - rss["idle"]) / memory["live_trials"], 1),
    })
    first_s, gaps_s = spread(first), spread(gaps)
    live = memory["live_trials"]
    rows = [
        ("study created -> first Job, median", f"{first_s['median_ms']} ms", "< 500 ms", first_s["median_ms"] < TARGET_MS),
        ("study created -> first Job, p90 / max", f"{first_s['p90_ms']} / {first_s['max_ms']} ms", "< 500 ms",
         first_s["max_ms"] < TARGET_MS),
        ("study created -> first Job, first study after start", f"{ms(cold)} ms", "", None),
        ("pod succeeded -> next Job, median", f"{gaps_s['median_ms']} ms", "< 500 ms median", gaps_s["median_ms"] < TARGET_MS),
        ("pod succeeded -> next Job, p90 / max", f"{gaps_s['p90_ms']} / {gaps_s['max_ms']} ms", "", None),
        ("operator API requests per trial (kopf + client)",
         f"{requests['per_trial']} ({' + '.join(f'{v} {k}' for k, v in requests['by_client_per_trial'].items())})", "", None),
        (f"operator RSS, {live} live trials", f"{memory['operator_rss_mib']} MiB", "", None),
        ("  of which: idle operator / growth per live trial",
         f"{memory['idle_operator_rss_mib']} MiB / {memory['growth_per_live_trial_kib']} KiB", "", None),
        (f"time to create all {live} Jobs ({memory['studies']} studies)", f"{memory['all_jobs_created_s']} s", "", None),
    ]
    print("| metric | value | target | met? |")
    print("|---|---|---|---|")
    for metric, value, target, met in rows:
        print(f"| {metric} | {value} | {target} | {'' if met is None else ('yes' if met else 'NO')} |")
    print(f"\nOperator requests over the sequential study ({requests['trials']} trials), per trial:")
    print("| client | method | resource | per trial |")
    print("|---|---|---|---|")
    for call, per in requests["by_call_per_trial"].items():
        print("| " + " | ".join(call.split(" ", 2)) + f" | {per} |")
    repeated = requests.get("repeated") or {}
    print(f"\nOf those, repeats of an earlier write (over {requests['trials']} trials): "
          + (", ".join(f"{k}: {v}" for k, v in repeated.items()) or "none"))
    print(f"\nMemory: the operator's process held {memory['process_rss_mib']} MiB; the harness's own imports "
          f"({memory['harness_imports_mib']} MiB: kmock, pytest, requests) are subtracted. The emulator "
          f"(a separate process) held {memory['emulator_rss_mib']} MiB.")
    print(f"Wall time {time.monotonic() - began:.0f} s.")
    if any(met is False for *_, met in rows):
        print("A target was missed.")

    import kopf as kopf_module
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "operator",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "kopf": getattr(kopf_module, "__version__", None) or _version("kopf"),
                    "api_server": "tests/support/emulator.py (kmock 0.8) in a separate process"},
        "settings": {"resync_seconds": args.resync_seconds, "strategy": "random", "quick": args.quick},
        "study_to_first_job": {**first_s, "first_after_start_ms": ms(cold), "target_ms": TARGET_MS},
        "pod_succeeded_to_next_job": {**gaps_s, "target_median_ms": TARGET_MS},
        "requests": requests,
        "memory": memory,
        "rss_kib": rss,
    }, indent=2) + "\n")
    return 0


def _version(package: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
