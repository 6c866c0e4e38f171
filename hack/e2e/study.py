"""Print the CPU variant of examples/digits/study.yaml that the kind end-to-end test applies.

Same objective, search space and strategy as the example; fewer and shorter trials, the
locally built trial image (loaded into kind, never pulled), and requests that fit a laptop.

A digits trial trains in about a second, less than Prometheus needs to discover the pod and
scrape it (up to 5 s to apply discovery, then the 5 s scrape interval), so the trials keep
serving /metrics for LINGER_SECONDS after training (KUBETUNE_METRICS_LINGER_SECONDS).
"""

import sys
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "study.yaml"
LINGER_SECONDS = 20


def cpu_variant(image: str) -> dict:
    study = yaml.safe_load(EXAMPLE.read_text())
    study["spec"]["budget"].update(maxTrials=4, parallelTrials=2)
    container = study["spec"]["trialTemplate"]["template"]["spec"]["containers"][0]
    container.update(image=image, imagePullPolicy="Never")
    container["env"] = [{"name": "KUBETUNE_METRICS_LINGER_SECONDS", "value": str(LINGER_SECONDS)}]
    container["args"] = [a for a in container["args"] if not a.startswith("--epochs=")] + ["--epochs=3", "--threads=1"]
    container["resources"] = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    return study


if __name__ == "__main__":
    sys.stdout.write(yaml.safe_dump(cpu_variant(sys.argv[1] if len(sys.argv) > 1 else "kubetune-trial:e2e"), sort_keys=False))
