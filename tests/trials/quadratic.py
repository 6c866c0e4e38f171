"""A fast trial program for runner tests: a quadratic bowl, reported over a few steps.

Behaviour switches come from parameters so that one study can hold good, crashing, silent,
hanging and flaky trials: mode=crash exits 1, mode=silent reports nothing, mode=hang waits
until it is stopped, mode=flaky fails its first attempt, mode=diverge (loss 100x its first
value) and mode=nan (loss NaN) diverge at step 2 and then wait until they are stopped.
`delay` sleeps between steps. It also reports the GPU it was given, when it started and
ended, and with pid=true its process id (to check that a stopped trial is really gone).
"""

import os
import sys
import time
from pathlib import Path

from kubetune import trial

params = trial.params()
x = float(params.get("x", 0.0))
mode = params.get("mode", "ok")
steps = int(params.get("steps", 3))
delay = float(params.get("delay", 0.0))
started = time.time()
gpu = os.environ.get("CUDA_VISIBLE_DEVICES")

if mode == "crash":
    print("something went wrong in the trainer", file=sys.stderr)
    sys.exit(1)
if mode == "flaky":
    marker = Path(os.environ["KUBETUNE_TERMINATION_PATH"]).parent / "flaky-marker"
    if not marker.exists():
        marker.write_text("failed once")
        sys.exit(1)
if mode == "silent":
    sys.exit(0)
for step in range(1, steps + 1):
    time.sleep(delay)
    extra = {"gpu": float(gpu)} if gpu not in (None, "") else {}
    if params.get("pid"):
        extra["pid"] = float(os.getpid())
    loss = (x - 0.3) ** 2 + 1.0 / step
    if mode in ("diverge", "nan") and step >= 2:
        loss = 100.0 * loss if mode == "diverge" else float("nan")
    trial.report(step=step, loss=loss, x=x, started=started, ended=time.time(), **extra)
    if mode in ("hang", "diverge", "nan") and (mode == "hang" or step >= 2):
        time.sleep(3600)
