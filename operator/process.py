"""The operator process: the Lease gate around Kopf (``synthrec operator`` runs :func:`run_operator`).

With leader election (the default) the process first waits for the Lease (operator/leader.py), serving a
liveness endpoint that says it stands by; only the leader starts Kopf (watches, handlers, the
reconcilers), and it renews the Lease while Kopf runs. When renewing fails for the renew deadline the
process stops Kopf at once and exits with code 1, so that Kubernetes restarts it as a fresh candidate: a
process that lost the Lease never writes again. On SIGTERM (a rolling update, a scale-down) it stops Kopf
and releases the Lease, so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from synthrec.operator.leader import LeaderElector, LeaseSettings, default_identity, default_namespace
from synthrec.operator.reconciler import Reconciler
from synthrec.operator.settings import OperatorConfig

log = logging.getLogger("synthrec.operator")
EXIT_OK = 0
EXIT_LOST_LEASE = 1


def lease_settings(config: OperatorConfig, identity: str | None = None) -> LeaseSettings:
    return LeaseSettings(
        name=config.lease_name,
        namespace=config.lease_namespace or default_namespace(),
        identity=identity or default_identity(),
        lease_duration=config.lease_duration,
        renew_deadline=config.lease_renew_deadline,
        retry_period=config.lease_retry_period,
    )


async def run_operator(
    config: OperatorConfig,
    *,
    elector: LeaderElector | None = None,
    stop: asyncio.Event | None = None,
    settings: Any | None = None,
    on_reconciler: Callable[[Reconciler], None] | None = None,
    login: bool = True,
) -> int:
    """Run the operator until ``stop`` is set (or SIGTERM/SIGINT in the main thread); returns the exit code.

    ``elector``: the Lease to lead first (default: one from ``config`` when ``config.leader_election``)."""
    import kopf

    from synthrec.operator.handlers import register

    stop = stop or asyncio.Event()
    with _signals_set(stop), contextlib.ExitStack() as owned:
        if elector is None and config.leader_election:
            from synthrec.operator.kube import KubeApi

            lease_api = KubeApi(request_timeout=config.request_timeout, workers=2)
            owned.callback(lease_api.close)
            elector = LeaderElector(lease_settings(config), lease_api)
        if elector is not None:
            async with _standby_liveness(config.liveness_port, elector):
                if not await elector.acquire(stop):
                    return EXIT_OK  # stopped while standing by
        registry = kopf.OperatorRegistry()
        reconciler = register(registry, config, login=login)
        if on_reconciler is not None:
            on_reconciler(reconciler)
        liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
        kopf_stop = asyncio.Event()
        kopf_task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=settings,
                standalone=True,  # one active replica is the Lease's job, not Kopf peering's
                clusterwide=config.clusterwide,
                namespaces=list(config.namespaces),
                liveness_endpoint=liveness,
                stop_flag=kopf_stop,
            ),
            name="kopf",
        )
        watchers: dict[asyncio.Task[Any], str] = {kopf_task: "kopf", asyncio.create_task(stop.wait()): "stop"}
        if elector is not None:
            watchers[asyncio.create_task(elector.hold(stop))] = "lease"
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            ended = {watchers[t] for t in done}
            lost = "lease" in ended and not stop.is_set()
            if lost:
                # Stop writing now: cancelling Kopf cancels every reconcile task and handler at once.
                kopf_task.cancel()
            else:
                kopf_stop.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await kopf_task
        finally:
            for task in watchers:
                task.cancel()
            if elector is not None:
                await elector.release()
    if lost:
        log.error("the operator lost its Lease and stopped; exiting so that it starts again as a candidate")
        return EXIT_LOST_LEASE
    return EXIT_OK


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Any:
    """SIGTERM/SIGINT set ``stop`` (main thread only; Kopf installs its own handlers once it runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _standby_liveness(port: int, elector: LeaderElector) -> AsyncIterator[None]:
    """/healthz while waiting for the Lease (Kopf serves it once leading): a standby is alive, not stuck."""
    if not port:
        yield
        return
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        s = elector.settings
        body = {"leader": False, "lease": f"{s.namespace}/{s.name}", "holder": elector.holder}
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
        yield
    finally:
        await runner.cleanup()
