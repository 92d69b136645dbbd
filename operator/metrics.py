"""Prometheus metrics of the operator (Kopf has none built in), served on SYNTHREC_METRICS_PORT.

Each Metrics object owns its registry, so several operators in one test process do not collide.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "synthrec_operator_reconciles_total", "Reconcile passes", ["kind", "result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "synthrec_operator_reconcile_seconds",
            "Duration of one reconcile pass (plan and apply)",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.jobs_created = Counter(
            "synthrec_operator_jobs_created_total", "Jobs created", ["kind", "stage"], registry=r
        )
        self.shards_done = Counter(
            "synthrec_operator_shards_done_total",
            "Shards or runs folded as done",
            ["stage"],
            registry=r,
        )
        self.shards_failed = Counter(
            "synthrec_operator_shards_failed_total", "Runs that failed", ["stage"], registry=r
        )
        self.status_patches = Counter(
            "synthrec_operator_status_patches_total", "Status patches sent", ["kind"], registry=r
        )
        self.api_errors = Counter(
            "synthrec_operator_api_errors_total", "Kubernetes API errors", ["verb", "code"], registry=r
        )
        self.last_watch_event = Gauge(
            "synthrec_operator_last_watch_event_timestamp_seconds",
            "Unix time of the last watch event the operator received",
            registry=r,
        )
        self.resources = Gauge(
            "synthrec_operator_resources", "Resources by kind and phase", ["kind", "phase"], registry=r
        )
        self._server: Any = None
        self._thread: Any = None

    def watch_event(self) -> None:
        self.last_watch_event.set(time.time())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the HTTP endpoint in a daemon thread; returns the bound port (0 = pick a free one)."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
