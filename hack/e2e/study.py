"""Print the CPU variant of examples/digits/study.yaml that the kind end-to-end test applies.

Same objective, search space and strategy as the example; fewer and shorter trials, the
locally built trial image (loaded into kind, never pulled), and requests that fit a laptop.

A digits trial trains in about a second, less than Prometheus needs to discover the pod and
scrape it (up to 5 s to apply discovery, then the 5 s scrape interval). The trial SDK serves
/metrics only while the trainer's process lives, so here the trainer runs in a Python process
that keeps serving for LINGER_SECONDS after training; the exit code and the termination
message (written at exit) are the trainer's own.
"""

import sys
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "study.yaml"
LINGER_SECONDS = 20
TRAIN_THEN_LINGER = (
    "import sys, time; from kubetune_trainer.train import main; "
    f"code = main(sys.argv[1:]); time.sleep({LINGER_SECONDS}); sys.exit(code)"
)


def cpu_variant(image: str) -> dict:
    study = yaml.safe_load(EXAMPLE.read_text())
    study["spec"]["budget"].update(maxTrials=4, parallelTrials=2)
    container = study["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container.update(image=image, imagePullPolicy="Never", command=["python", "-c", TRAIN_THEN_LINGER])
    container["args"] = [a for a in container["args"] if not a.startswith("--epochs=")] + ["--epochs=3", "--threads=1"]
    container["resources"] = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    return study


if __name__ == "__main__":
    sys.stdout.write(yaml.safe_dump(cpu_variant(sys.argv[1] if len(sys.argv) > 1 else "kubetune-trial:e2e"), sort_keys=False))
