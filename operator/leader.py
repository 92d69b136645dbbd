"""One active operator: leader election on a ``coordination.k8s.io/v1`` Lease, client-go's algorithm.

Why a Lease of our own and not Kopf's peering: peering is no lease (``KopfPeering`` objects need their own
CRDs and RBAC; replicas of equal priority all freeze; a paused replica still watches), while the Lease
protocol is what every Kubernetes controller uses (``kubectl get lease`` shows the holder) and it gates the
whole Kopf operator (operator/process.py): a replica that does not hold the Lease runs no watch, no
handler, no finalizer logic, so it can write nothing at all.

The protocol (k8s.io/client-go/tools/leaderelection): a candidate takes the Lease when it is free or its
holder has not renewed it for ``leaseDurationSeconds``, measured on the candidate's own clock from when it
last saw the record change (never from the timestamps in it: clocks of two nodes differ). Every write is
an update conditional on the resourceVersion just read, so of two candidates exactly one wins. The leader
renews every ``retry_period``; when it has not managed to renew for ``renew_deadline`` (shorter than the
lease duration) it stops leading, before anybody else may take over. Stepping down on shutdown empties
the holder, so a standby takes over at once instead of after the lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("synthrec.operator")

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_RECORD = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")


def micro_time(when: datetime) -> str:
    """A ``metav1.MicroTime`` (RFC 3339 with exactly six fraction digits), as the API server parses it."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod's name (or the host name) and a random suffix: unique per process, readable in the Lease."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "synthrec-operator"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """Where the Lease lives: $POD_NAMESPACE (the chart sets it), the pod's own namespace, else 'default'."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0  # seconds a Lease not renewed stays its holder's
    renew_deadline: float = 10.0  # the leader steps down when it could not renew for this long
    retry_period: float = 2.0  # between two tries to acquire or renew

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"leader election needs 0 < retry period ({self.retry_period} s) < renew deadline "
                f"({self.renew_deadline} s) < lease duration ({self.lease_duration} s)"
            )


class LeaseApi(Protocol):
    """The three Lease calls (operator/kube.py implements them): None on 404 (read) and 409 (writes)."""

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None: ...

    async def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None: ...


class LeaderElector:
    """Acquire, hold and release one Lease. ``clock`` is monotonic; ``now`` gives the wall time written."""

    def __init__(
        self,
        settings: LeaseSettings,
        api: LeaseApi,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock
        self.now = now
        self.is_leader = False
        self.holder: str | None = None  # the holder last seen
        self._observed: tuple[Any, ...] | None = None  # the record last seen ...
        self._observed_at = 0.0  # ... and when (monotonic): the lease duration counts from here
        self._resource_version: str | None = None

    # -------------------------------------------------------------------------------- one try

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this process holds the Lease afterwards."""
        s = self.settings
        stamp = micro_time(self.now())
        lease = await self.api.read_lease(s.namespace, s.name)
        if lease is None:
            created = await self.api.create_lease(s.namespace, self._body(stamp, stamp, 0))
            return self._took(created)
        spec = lease.get("spec") or {}
        self._observe(spec, lease)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != s.identity and not self._expired(spec):
            self.is_leader = False
            return False
        if holder == s.identity:
            acquired, transitions = spec.get("acquireTime") or stamp, int(spec.get("leaseTransitions") or 0)
        else:
            acquired, transitions = stamp, int(spec.get("leaseTransitions") or 0) + 1
        body = self._body(acquired, stamp, transitions)
        body["metadata"]["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        return self._took(await self.api.replace_lease(s.namespace, body))

    def _body(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        s = self.settings
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": max(1, round(s.lease_duration)),
                "acquireTime": acquired,
                "renewTime": renewed,
                "leaseTransitions": transitions,
            },
        }

    def _observe(self, spec: dict[str, Any], lease: dict[str, Any]) -> None:
        record = tuple(
            spec.get(k)
            for k in (
                "holderIdentity",
                "leaseDurationSeconds",
                "acquireTime",
                "renewTime",
                "leaseTransitions",
            )
        )
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder = spec.get("holderIdentity") or None
        self._resource_version = (lease.get("metadata") or {}).get("resourceVersion")

    def _expired(self, spec: dict[str, Any]) -> bool:
        duration = spec.get("leaseDurationSeconds") or self.settings.lease_duration
        return self.clock() >= self._observed_at + float(duration)

    def _took(self, lease: dict[str, Any] | None) -> bool:
        """After a create or update: None means somebody else wrote first (409)."""
        if lease is None:
            self.is_leader = False
            return False
        self._observe(lease.get("spec") or {}, lease)
        self.is_leader = True
        return True

    # -------------------------------------------------------------------------------- loops

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Try every retry period until this process leads (True) or ``stop`` is set (False)."""
        s = self.settings
        waiting_for: str | None = None
        while stop is None or not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    log.info("leading: holding Lease %s/%s as %s", s.namespace, s.name, s.identity)
                    return True
            except Exception as exc:  # an unreachable API server: keep trying, say so
                log.warning("cannot acquire Lease %s/%s: %s", s.namespace, s.name, exc)
            if self.holder and self.holder != waiting_for:
                waiting_for = self.holder
                log.info("standing by: Lease %s/%s is held by %s", s.namespace, s.name, self.holder)
            if await _wait(stop, s.retry_period):
                return False
        return False

    async def hold(self, stop: asyncio.Event | None = None) -> bool:
        """Renew every retry period. Returns False as soon as leadership is lost (another holder, or no
        successful renewal for the renew deadline), True when ``stop`` was set while still leading."""
        s = self.settings
        last_renewal = self.clock()
        while True:
            if await _wait(stop, s.retry_period):
                return True
            budget = s.renew_deadline - (self.clock() - last_renewal)
            try:
                renewed = await asyncio.wait_for(self.try_acquire_or_renew(), max(0.001, budget))
            except Exception as exc:  # timeouts and API errors count against the renew deadline
                log.warning("cannot renew Lease %s/%s: %s", s.namespace, s.name, exc or type(exc).__name__)
                renewed = False
            if renewed:
                last_renewal = self.clock()
                continue
            if self.holder not in (None, s.identity):
                log.error("lost Lease %s/%s to %s", s.namespace, s.name, self.holder)
                self.is_leader = False
                return False
            if self.clock() - last_renewal >= s.renew_deadline:
                log.error(
                    "could not renew Lease %s/%s for %.1f s (the renew deadline): stepping down",
                    s.namespace,
                    s.name,
                    s.renew_deadline,
                )
                self.is_leader = False
                return False

    async def release(self) -> None:
        """Step down (empty holder, as client-go's ReleaseOnCancel): a standby takes over at once."""
        s = self.settings
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.api.read_lease(s.namespace, s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            stamp = micro_time(self.now())
            body = self._body((lease.get("spec") or {}).get("acquireTime") or stamp, stamp, 0)
            body["spec"].update(
                holderIdentity=None,
                leaseDurationSeconds=1,
                leaseTransitions=int((lease.get("spec") or {}).get("leaseTransitions") or 0),
            )
            body["metadata"]["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
            if await self.api.replace_lease(s.namespace, body) is not None:
                log.info("released Lease %s/%s", s.namespace, s.name)
        except Exception as exc:  # the standby then takes over after the lease duration instead
            log.warning("could not release Lease %s/%s: %s", s.namespace, s.name, exc)


async def _wait(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``; True when ``stop`` was set meanwhile (at once, not at the end of the sleep)."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
