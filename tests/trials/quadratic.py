"""A fast trial program for runner tests: a quadratic bowl, reported over a few steps.

Behaviour switches come from parameters so that one study can hold good, crashing, silent,
hanging and flaky trials: mode=crash exits 1, mode=silent reports nothing, mode=hang waits
until it is stopped, mode=flaky fails its first attempt. `delay` sleeps between steps.
It also reports the GPU it was given and when it started and ended.
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
    trial.report(step=step, loss=(x - 0.3) ** 2 + 1.0 / step, x=x, started=started, ended=time.time(), **extra)
    if mode == "hang":
        time.sleep(3600)
