"""The cluster body: a kopf operator that runs HyperparameterStudies as trials and Jobs.

    kubetune operator --all-namespaces --prometheus-url http://prometheus:9090
    python -m kubetune.operator --namespace ml

Only the command line lives here; kopf and the Kubernetes client are imported when the
operator starts, so the local CLI works without the cluster extra installed.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NAMESPACE",
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch the whole cluster (the default)")
    parser.add_argument("--prometheus-url", default=os.environ.get("KUBETUNE_PROMETHEUS_URL"),
                        help="Prometheus to read trial metrics from (env KUBETUNE_PROMETHEUS_URL); a study can "
                        "override it with the annotation kubetune.io/prometheus-url. Without one, results come "
                        "from the trials' termination messages")
    parser.add_argument("--resync-seconds", type=float, default=10.0,
                        help="reconcile every study at least this often, events or not (default 10)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="serve the operator's /metrics here (0: off)")
    parser.add_argument("--health-port", type=int, default=8081,
                        help="serve the liveness probe on /healthz here (0: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    # Bayesian suggestions run torch on one thread (strategies/bayesian.py) and set it back
    # afterwards. Reconciles run in parallel here, so start torch on one thread (it reads this
    # when first imported): then no reconcile changes the process-wide setting under another.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import kopf
    from prometheus_client import start_http_server

    from kubetune.operator import handlers  # noqa: F401 - registers the handlers
    from kubetune.operator.reconcile import OperatorConfig

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.metrics_port:
        start_http_server(args.metrics_port)
    config = OperatorConfig(prometheus_url=args.prometheus_url, resync_seconds=args.resync_seconds)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=config),
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune operator", description="Run the kubetune Kubernetes operator.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
