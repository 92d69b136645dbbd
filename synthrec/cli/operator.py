"""synthrec operator: run the Kubernetes operator (Kopf under the hood)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "operator",
        help="run the Kubernetes operator that turns SyntheticDatasets and RecognitionExperiments into Jobs",
        description="Watch SyntheticDataset and RecognitionExperiment resources and run them as batch/v1 "
        "Jobs, with progress, retries and results in their status. One replica at a time acts: each first "
        "leads a coordination.k8s.io Lease (the others stand by). Cluster-wide unless namespaces are given. "
        "Configuration comes from SYNTHREC_* environment variables (see "
        "synthrec.operator.settings); the flags here override them. Credentials: in-cluster ServiceAccount "
        "in a pod, else $KUBECONFIG.",
        examples=[
            "synthrec operator",
            "synthrec operator --namespace team-a --namespace team-b",
            "synthrec operator --liveness 8081 --metrics-port 8080 --verbose",
            "SYNTHREC_WORKER_IMAGE=registry.example/synthrec:1.0 synthrec operator --metrics-port 0",
        ],
        func=run,
    )
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        metavar="NS",
        help="watch only this namespace (repeatable; default: $SYNTHREC_NAMESPACES, else cluster-wide)",
    )
    p.add_argument(
        "--liveness",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Kopf's liveness endpoint on http://0.0.0.0:PORT/healthz "
        "(default: $SYNTHREC_LIVENESS_PORT or 8081; 0 disables)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on PORT (default: $SYNTHREC_METRICS_PORT or 8080; 0 disables)",
    )
    p.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        default=None,
        help="run at once without leading the Lease (only when no other replica can run; "
        "default: $SYNTHREC_LEADER_ELECTION, else leader election on)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    try:
        import kopf  # noqa: F401 - only to say clearly when the extra is missing

        from synthrec.operator.process import run_operator
        from synthrec.operator.settings import OperatorConfig, SettingsError
    except ImportError as exc:
        print(
            f"error: the operator needs the 'operator' extra (pip install 'synthrec[operator]'): {exc}",
            file=sys.stderr,
        )
        return 1
    try:
        config = OperatorConfig.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["namespaces"] = tuple(args.namespace)
    if args.liveness is not None:
        overrides["liveness_port"] = args.liveness
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    if args.leader_election is not None:
        overrides["leader_election"] = args.leader_election
    config = config.with_overrides(**overrides)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    scope = "cluster-wide" if config.clusterwide else f"namespaces {', '.join(config.namespaces)}"
    logging.getLogger("synthrec.operator").info("synthrec operator starting (%s)", scope)
    return asyncio.run(run_operator(config))
