"""Fold observed Jobs and Pods into a resource's status: conditions, activity, events, patch throttling.

Pure functions and one small clock-injected class (StatusThrottle). The planner (planning.py) decides
what a resource's status says; this module holds the pieces that are the same for both kinds:

- what the pods are doing (Running only when a pod really runs; Queued with the scheduler's message while
  pods are Pending, unschedulable, pulling images or waiting for Kueue quota);
- conditions with ``observedGeneration``, and the phase with Ready/Reconciling/Stalled via
  ``synthrec.api.conditions.derive``;
- which condition transitions deserve a Kubernetes Event;
- when a status patch is due (only on change, at most every ``interval`` seconds per resource).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from synthrec.api import conditions as cond
from synthrec.operator.observed import JobView, PodView

# Waiting reasons of a container that mean "this will not fix itself quickly".
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Conditions that are only worth an Event when they become True (False is their normal state).
_QUIET_WHEN_FALSE = ("Queued", "Running", "Degraded", "Suspended", "DatasetReady")
_WARNING_TYPES = ("Failed", "Degraded")
# Transitions that happen at every stage boundary and say nothing a user acts on.
_QUIET_REASONS = ("PodsPending", "JobStarting")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Activity:
    """What the pods of the active (unfinished) Jobs are doing right now."""

    running: int = 0
    pending: int = 0
    waiting_for_quota: list[str] = field(default_factory=list)  # Jobs suspended by Kueue
    # Jobs created (or being created in this pass) with no pod running or pending yet: between two stages
    # the resource is queued for its next Job, not back to Pending.
    starting: list[str] = field(default_factory=list)
    unschedulable: str = ""
    image_pull: str = ""
    container_config: str = ""

    @property
    def trouble(self) -> tuple[str, str] | None:
        """A reason and message for a Degraded condition, when pods cannot start by themselves."""
        if self.image_pull:
            return "ImagePullBackOff", self.image_pull
        if self.container_config:
            return "ContainerConfigError", self.container_config
        return None

    @property
    def queued(self) -> tuple[str, str] | None:
        """A reason and message for Queued=True: nothing runs and something waits."""
        if self.running:
            return None
        if self.waiting_for_quota:
            return "WaitingForQuota", (
                f"Job {', '.join(self.waiting_for_quota)} is suspended, waiting for Kueue to admit it"
            )
        if self.unschedulable:
            return "Unschedulable", self.unschedulable
        if self.image_pull:
            return "ImagePullBackOff", self.image_pull
        if self.container_config:
            return "ContainerConfigError", self.container_config
        if self.pending:
            return "PodsPending", f"{self.pending} pod(s) pending, none running yet"
        if self.starting:
            return "JobStarting", f"Job {', '.join(self.starting)} is starting: none of its pods runs yet"
        return None


def pod_activity(jobs: Iterable[JobView], pods: Iterable[PodView]) -> Activity:
    """Summarise the pods that belong to the given (active) Jobs."""
    active = {j.uid: j for j in jobs if not j.finished and not j.deleting}
    act = Activity()
    for job in active.values():
        if job.suspended:
            act.waiting_for_quota.append(job.name)
    busy: set[str] = set()  # active Jobs with a pod that runs or waits
    for pod in pods:
        if pod.job_uid not in active or pod.deleting:
            continue
        if pod.running or pod.phase == "Pending":
            busy.add(pod.job_uid)
        if pod.running:
            act.running += 1
        elif pod.phase == "Pending":
            act.pending += 1
            if pod.unschedulable and not act.unschedulable:
                act.unschedulable = f"pod {pod.name}: {pod.unschedulable}"
            if pod.waiting_reason in IMAGE_PULL_REASONS and not act.image_pull:
                act.image_pull = f"pod {pod.name}: {pod.waiting_reason}: {pod.waiting_message}".rstrip(": ")
            if pod.waiting_reason in CONFIG_REASONS and not act.container_config:
                act.container_config = f"pod {pod.name}: {pod.waiting_reason}: {pod.waiting_message}".rstrip(
                    ": "
                )
    act.starting = [j.name for uid, j in active.items() if uid not in busy and not j.suspended]
    return act


class Conditions:
    """A condition list being edited for one generation and one point in time."""

    def __init__(self, existing: Iterable[dict[str, Any]] | None, generation: int | None, now: str) -> None:
        self.items: list[dict[str, Any]] = [dict(c) for c in existing or []]
        self.generation = generation
        self.now = now

    def set(self, ctype: str, status: bool, reason: str, message: str = "") -> None:
        self.items = cond.set_condition(
            self.items, ctype, status, reason, message[:4000], generation=self.generation, now=self.now
        )

    def clear(self, ctype: str, reason: str, message: str = "") -> None:
        """Set False, but only if the condition exists (no noise for conditions that never applied)."""
        if cond.get(self.items, ctype) is not None:
            self.set(ctype, False, reason, message)

    def is_true(self, ctype: str) -> bool:
        return cond.is_true(self.items, ctype)

    def get(self, ctype: str) -> dict[str, Any] | None:
        return cond.get(self.items, ctype)

    @property
    def terminal(self) -> bool:
        return cond.is_terminal(self.items)

    def phase(self) -> str:
        return cond.derive_phase(self.items)

    def finish(self) -> str:
        """Set the kstatus summary conditions (Ready, Reconciling, Stalled) and return the phase."""
        phase, self.items = cond.derive(self.items, generation=self.generation, now=self.now)
        return phase

    def apply_activity(self, act: Activity, running_reason: str) -> None:
        """Running / Queued / pod-start trouble from what the pods do."""
        if act.running:
            self.set("Running", True, running_reason, f"{act.running} pod(s) running")
        else:
            self.clear("Running", "NoPodRunning", "no pod is running")
        queued = act.queued
        if queued:
            self.set("Queued", True, *queued)
        else:
            self.clear("Queued", "Admitted" if act.running else "NotQueued")

    def stop_activity(self, reason: str, message: str = "") -> None:
        self.clear("Running", reason, message)
        self.clear("Queued", reason, message)


def transitions(old: Iterable[dict[str, Any]] | None, new: Iterable[dict[str, Any]]) -> list[Event]:
    """Events for the condition changes between the persisted status and the new one."""
    before = {c.get("type"): c for c in old or []}
    events = []
    for c in new:
        prev = before.get(c.get("type"))
        status = c.get("status")
        if prev is not None and prev.get("status") == status:
            continue  # no transition (a reason or message change is not worth an Event)
        if c.get("type") in _QUIET_WHEN_FALSE and status != "True":
            continue
        if c.get("reason") in _QUIET_REASONS or c.get("type") in cond.SUMMARY:
            continue  # the summary conditions repeat what another condition's Event already says
        warning = c.get("type") in _WARNING_TYPES and status == "True"
        label = c.get("type") if status == "True" else f"{c.get('type')}={status}"
        message = f"{label}: {c.get('message') or c.get('reason')}"
        events.append(Event("Warning" if warning else "Normal", str(c.get("reason")), message[:1000]))
    return events


def comparable(status: dict[str, Any] | None) -> dict[str, Any]:
    """A status without the fields that change on every write (so 'changed' means something)."""
    out = copy.deepcopy(status or {})
    progress = out.get("progress")
    if isinstance(progress, dict):
        progress.pop("lastUpdateTime", None)
    return out


class StatusThrottle:
    """Patch a resource's status only when it changed, and at most once every ``interval`` seconds.

    ``decide`` is called with the persisted status (from the watch) and the freshly computed one. It
    also remembers what was last patched, so a status that was patched but whose watch event has not
    arrived yet is not patched again.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Any, tuple[float, dict[str, Any]]] = {}

    def decide(
        self, key: Any, persisted: dict[str, Any] | None, new: dict[str, Any], now: float
    ) -> tuple[bool, float | None]:
        """(patch now?, seconds until a patch may be sent when one is due but throttled)."""
        target = comparable(new)
        last = self._last.get(key)
        if target == comparable(persisted) or (last is not None and target == last[1]):
            return False, None
        if last is None:
            return True, None  # the first patch of this operator process
        wait = last[0] + self.interval - now
        if wait <= 0:
            return True, None
        return False, wait

    def patched(self, key: Any, status: dict[str, Any], now: float) -> None:
        self._last[key] = (now, comparable(status))

    def forget(self, key: Any) -> None:
        self._last.pop(key, None)
