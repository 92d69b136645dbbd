"""``FakeKubelet``: a test kubelet plus Job controller that runs batch/v1 Jobs against the emulator.

It runs as asyncio tasks in the test's loop and talks to the API over HTTP only (watches on Jobs and
on its own Pods), so whatever it does is visible to an operator exactly as on a cluster:

- Pods are created like the Job controller does: ``<job>-<index>-<random>``, owned by the Job,
  labels ``job-name``/``controller-uid``/``batch.kubernetes.io/job-completion-index``, the index
  annotation, ``JOB_COMPLETION_INDEX`` from the downward API, the ``batch.kubernetes.io/job-tracking``
  finalizer (so a deleted pod is ``terminating`` until its process is gone);
- Pods go Pending -> Running -> Succeeded/Failed with ``containerStatuses[].state.terminated``
  ``{exitCode, reason, message}`` (the message is the termination-message file, max 4096 bytes);
- Job semantics: Indexed and NonIndexed ``completions``/``parallelism``, ``suspend`` (kills pods, not
  counted as failures), ``backoffLimit``, ``backoffLimitPerIndex``, ``maxFailedIndexes``,
  ``podFailurePolicy`` (FailJob/FailIndex/Ignore/Count on exit codes In/NotIn or pod conditions),
  ``podReplacementPolicy`` (``Failed``: never two pods per index), ``activeDeadlineSeconds``,
  ``successPolicy``, ``ttlSecondsAfterFinished``, and Job deletion (the garbage collector deletes
  the pods, their processes are killed; with the Orphan default of batch/v1 they keep running);
- Job status through the status subresource as the real controller writes it: ``active``, ``ready``,
  ``terminating``, ``succeeded``, ``failed`` (zero counts omitted), ``completedIndexes`` and
  ``failedIndexes`` as range strings, ``startTime``, ``completionTime`` and conditions
  (SuccessCriteriaMet then Complete; FailureTarget then Failed, with the real reasons and messages).

Cluster trouble on demand: ``block_scheduling`` (PodScheduled=False/Unschedulable, pod stays Pending),
``fail_image_pull`` (waiting ImagePullBackOff), ``disrupt`` (DisruptionTarget condition, then deletion).

Differences from a real cluster, on purpose: no retry back-off delay unless ``retry_backoff`` is set
(real: 10 s doubling), a pod deleted by the controller is killed with ``grace_period`` (real: 30 s),
pods start in one poll interval, ``ready`` = running, and multi-container pods finish when all
containers exit. Start the kubelet before creating Jobs: it adopts no pre-existing pods.

With an in-process Kopf operator: stopping it cancels every task of the loop created after it started
(Kopf's hung-task sweep), which includes the pods this kubelet started meanwhile (their processes are
killed and the pods stay as they were; a warning is logged). Stop the operator only at the end of a
test, or run it in its own thread/loop when a test restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from synthrec.plan import format_ranges, parse_ranges  # the Job status range format, one implementation
from tests.k8s.client import ApiError, K8sClient
from tests.k8s.emulator import now_rfc3339
from tests.k8s.runners import (
    ContainerConfigError,
    ContainerLaunch,
    ContainerProcess,
    ContainerResult,
    FakeRunner,
    Runner,
    SubprocessRunner,
)

__all__ = [
    "ContainerResult",
    "FakeKubelet",
    "FakeRunner",
    "PodRecord",
    "SubprocessRunner",
    "format_ranges",
    "parse_ranges",
]

logger = logging.getLogger(__name__)

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
LABEL_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
LABEL_INDEX = ANNOTATION_INDEX = "batch.kubernetes.io/job-completion-index"
ANNOTATION_INDEX_FAILURES = "batch.kubernetes.io/job-index-failure-count"
INDEX_FIELD_PATH = f"metadata.annotations['{ANNOTATION_INDEX}']"
TERMINAL = frozenset({"Succeeded", "Failed"})
DEFAULT_UNSCHEDULABLE = (
    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)
MSG_COMPLETE = "Reached expected number of succeeded pods"
MSG_BACKOFF = "Job has reached the specified backoff limit"
MSG_DEADLINE = "Job was active longer than specified deadline"
MSG_MAX_FAILED_INDEXES = "Job has exceeded the specified maximal number of failed indexes"
MSG_FAILED_INDEXES = "Job has failed indexes"


@dataclass(eq=False)
class PodRecord:
    """What the fake kubelet knows about one pod it created (kept after the pod is gone)."""

    name: str
    namespace: str
    job_name: str
    index: int | None
    attempt: int
    created_at: float  # loop time
    phase: str = "Pending"
    terminal_at: float | None = None
    results: list[tuple[str, ContainerResult]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)  # extra ones, e.g. DisruptionTarget
    deleting: bool = False  # deletionTimestamp set: being killed
    kill_reason: str | None = None  # suspended, deleted, job-finished, disrupted
    counted: bool = False
    released: bool = False  # tracking finalizer removed (or the pod is gone)
    gone: bool = False
    pod_dir: Path | None = None
    kill: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _JobState:
    uid: str
    namespace: str
    name: str
    job: dict[str, Any]
    deleted: bool = False
    finished: bool = False
    finished_at: float | None = None
    ttl_done: bool = False
    pods: dict[str, PodRecord] = field(default_factory=dict)
    succeeded: int = 0  # NonIndexed
    succeeded_indexes: set[int] = field(default_factory=set)
    failed_indexes: set[int] = field(default_factory=set)
    index_failures: Counter[int | None] = field(default_factory=Counter)
    attempts: Counter[int | None] = field(default_factory=Counter)
    retry_after: dict[int | None, float] = field(default_factory=dict)
    failed: int = 0
    start_time: str | None = None
    started_at: float | None = None
    completion_time: str | None = None
    target: tuple[str, str, str] | None = None  # (SuccessCriteriaMet|FailureTarget, reason, message)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    last_status: dict[str, Any] | None = None
    max_active: int = 0
    create_error: str | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return self.job.get("spec") or {}

    @property
    def indexed(self) -> bool:
        return self.spec.get("completionMode") == "Indexed"

    @property
    def completions(self) -> int:
        completions = self.spec.get("completions")
        return 1 if completions is None else int(completions)

    def live(self) -> list[PodRecord]:
        return [rec for rec in self.pods.values() if rec.phase not in TERMINAL]

    def active(self) -> list[PodRecord]:
        return [rec for rec in self.pods.values() if rec.phase not in TERMINAL and not rec.deleting]

    def has_condition(self, type_: str, status: str = "True") -> bool:
        return any(c["type"] == type_ and c["status"] == status for c in self.conditions)

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> None:
        now = now_rfc3339()
        for condition in self.conditions:
            if condition["type"] == type_:
                if condition["status"] != status:
                    condition["lastTransitionTime"] = now
                condition.update(status=status, reason=reason, message=message, lastProbeTime=now)
                return
        self.conditions.append(
            {
                "type": type_,
                "status": status,
                "lastProbeTime": now,
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }
        )


@dataclass(frozen=True)
class _Hook:
    kind: str  # unschedulable | image-pull
    message: str


class FakeKubelet:
    """A kubelet plus Job controller for tests; use as ``async with FakeKubelet(url, runner) as kubelet``."""

    def __init__(
        self,
        api: K8sClient | str,
        runner: Runner | None = None,
        *,
        namespace: str | None = None,
        workdir: Path | str | None = None,
        interval: float = 0.05,
        grace_period: float = 2.0,
        retry_backoff: float = 0.0,
        node_name: str = "fake-node",
        report_running: bool = True,
        tracking_finalizer: bool = True,
    ) -> None:
        """
        :param api: the API server URL (or a client whose URL is used; the kubelet opens its own session).
        :param runner: how containers run (default: ``SubprocessRunner()``).
        :param namespace: only manage Jobs of this namespace (default: all).
        :param workdir: where pod folders and logs go (default: a new temp folder, kept for debugging).
        :param interval: how often Jobs are re-synced when nothing wakes the controller (seconds).
        :param grace_period: SIGTERM -> SIGKILL delay when a pod is deleted.
        :param retry_backoff: delay before replacing a failed pod, doubled per failure (real: 10 s).
        :param report_running: write the Running pod status (off: fewer writes in big benchmarks).
        :param tracking_finalizer: put the Job controller's finalizer on pods (off: fewer writes).
        """
        self.api = K8sClient(api.base_url if isinstance(api, K8sClient) else api, user_agent="fake-kubelet")
        self.runner: Runner = runner if runner is not None else SubprocessRunner()
        self.namespace = namespace
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
        )
        self.interval = interval
        self.grace_period = grace_period
        self.retry_backoff = retry_backoff
        self.node_name = node_name
        self.report_running = report_running
        self.tracking_finalizer = tracking_finalizer
        self.errors: list[BaseException] = []  # unexpected failures of the kubelet itself
        self._jobs: dict[str, _JobState] = {}
        self._pods: dict[tuple[str, str], PodRecord] = {}
        self._hooks: dict[tuple[str, str], _Hook] = {}
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start watching; returns once the initial Job and Pod listings are in."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        jobs_synced, pods_synced = asyncio.Event(), asyncio.Event()
        self._tasks = [
            asyncio.create_task(
                self._watch("batch/v1/jobs", None, self._on_jobs_listed, self._on_job, jobs_synced)
            ),
            asyncio.create_task(
                self._watch("v1/pods", LABEL_CONTROLLER_UID, lambda _: None, self._on_pod, pods_synced)
            ),
            asyncio.create_task(self._control()),
        ]
        async with asyncio.timeout(10):
            await asyncio.gather(jobs_synced.wait(), pods_synced.wait())

    async def stop(self) -> None:
        """Stop everything and kill all processes (no API writes)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        pod_tasks = [rec.task for rec in self._pods.values() if rec.task is not None and not rec.task.done()]
        for task in pod_tasks:
            task.cancel()
        pending = {*self._tasks, *pod_tasks}
        for _ in range(10):  # re-cancel whatever survived a cancellation (defensive)
            _, pending = await asyncio.wait(pending, timeout=1.0) if pending else (set(), set())
            if not pending:
                break
            for task in pending:
                task.cancel()
        self._tasks = []
        await self.api.close()

    def check(self) -> None:
        """Raise if the kubelet itself failed (a bug or an unexpected API answer)."""
        if self.errors:
            raise RuntimeError(
                f"FakeKubelet failed {len(self.errors)} time(s); first: {self.errors[0]!r}"
            ) from self.errors[0]

    # ------------------------------------------------------------ test hooks and introspection

    def block_scheduling(
        self, job_name: str, namespace: str = "default", message: str = DEFAULT_UNSCHEDULABLE
    ) -> None:
        """New and still-pending pods of this Job stay Pending with PodScheduled=False/Unschedulable."""
        self._hooks[(namespace, job_name)] = _Hook("unschedulable", message)
        self._wakeup.set()

    def fail_image_pull(self, job_name: str, namespace: str = "default", message: str | None = None) -> None:
        """New and still-pending pods of this Job stay Pending with a waiting ImagePullBackOff container."""
        self._hooks[(namespace, job_name)] = _Hook("image-pull", message or "")
        self._wakeup.set()

    def unblock(self, job_name: str, namespace: str = "default") -> None:
        """Lift ``block_scheduling``/``fail_image_pull``: pending pods start."""
        self._hooks.pop((namespace, job_name), None)
        self._wakeup.set()

    async def disrupt(
        self,
        job_name: str,
        namespace: str = "default",
        index: int | None = None,
        *,
        reason: str = "DeletionByTaintManager",
        message: str = "Taint manager: deleting due to NoExecute taint",
    ) -> list[str]:
        """Node disruption: running pods of the Job (or of one index) get a DisruptionTarget condition
        and are deleted, so they fail; returns the pod names."""
        names = []
        for rec in self.pods(job_name, namespace):
            if rec.phase in TERMINAL or rec.deleting or (index is not None and rec.index != index):
                continue
            now = now_rfc3339()
            rec.conditions.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                }
            )
            with contextlib.suppress(ApiError):
                pod = await self.api.get("v1/pods", rec.name, namespace)
                conditions = [*(pod.get("status") or {}).get("conditions", []), rec.conditions[-1]]
                await self.api.patch_status("v1/pods", rec.name, {"conditions": conditions}, namespace)
            await self._delete_pod(rec, "disrupted")
            names.append(rec.name)
        return names

    def pods(self, job_name: str, namespace: str = "default") -> list[PodRecord]:
        """Every pod this kubelet created for the Job, in creation order (also the deleted ones)."""
        return [rec for rec in self._pods.values() if rec.job_name == job_name and rec.namespace == namespace]

    def max_active(self, job_name: str, namespace: str = "default") -> int:
        """The most pods that were active at once for this Job (to check ``parallelism``)."""
        return max(
            (
                st.max_active
                for st in self._jobs.values()
                if st.name == job_name and st.namespace == namespace
            ),
            default=0,
        )

    def logs(self, pod_name: str, namespace: str = "default") -> str:
        """stdout+stderr of the pod's containers (SubprocessRunner), as ``kubectl logs`` would show."""
        rec = self._pods.get((namespace, pod_name))
        if rec is None or rec.pod_dir is None:
            return ""
        return "".join(path.read_text(errors="replace") for path in sorted(rec.pod_dir.glob("*.log")))

    def describe(self, log_tail: int = 2000) -> str:
        """A debugging summary: every pod with phase, exit codes, messages and the tail of its logs."""
        lines = [f"FakeKubelet workdir: {self.workdir}"]
        lines += [f"kubelet error: {exc!r}" for exc in self.errors]
        for rec in self._pods.values():
            results = ", ".join(f"{name}: exit {r.exit_code} {r.message[:200]!r}" for name, r in rec.results)
            lines.append(
                f"pod {rec.namespace}/{rec.name} index={rec.index} attempt={rec.attempt} "
                f"phase={rec.phase} kill={rec.kill_reason} {results}"
            )
            tail = self.logs(rec.name, rec.namespace)[-log_tail:]
            if tail:
                lines.append("    " + tail.replace("\n", "\n    "))
        return "\n".join(lines)

    # ------------------------------------------------------------ watching

    async def _watch(
        self,
        resource: str,
        label_selector: str | None,
        on_listed: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        synced: asyncio.Event,
    ) -> None:
        resource_version: str | None = None
        while not self._stopping:
            try:
                if resource_version is None:
                    listing = await self.api.list_raw(resource, self.namespace, label_selector=label_selector)
                    on_listed(listing["items"])
                    for obj in listing["items"]:
                        on_event("ADDED", obj)
                    resource_version = listing["metadata"]["resourceVersion"]
                    synced.set()
                async for event in self.api.watch(
                    resource, self.namespace, resource_version=resource_version, label_selector=label_selector
                ):
                    if event["type"] == "ERROR":  # 410 Gone: relist
                        resource_version = None
                        break
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    on_event(event["type"], event["object"])
            except (aiohttp.ClientError, ApiError, ConnectionError, OSError) as exc:
                if self._stopping:
                    return
                logger.debug("FakeKubelet: watching %s failed (%r); retrying", resource, exc)
                await asyncio.sleep(self.interval)

    def _on_jobs_listed(self, items: list[dict[str, Any]]) -> None:
        uids = {item["metadata"]["uid"] for item in items}
        for st in self._jobs.values():
            if st.uid not in uids:
                st.deleted = True
        self._wakeup.set()

    def _on_job(self, event_type: str, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        st = self._jobs.get(meta["uid"])
        if event_type == "DELETED":
            if st is not None:
                st.deleted = True
        elif st is not None:
            st.job = job
        elif (job.get("spec") or {}).get("managedBy") in (None, "kubernetes.io/job-controller"):
            st = _JobState(meta["uid"], meta["namespace"], meta["name"], job)
            conditions = (job.get("status") or {}).get("conditions") or []
            if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
                st.finished, st.conditions = True, copy.deepcopy(conditions)  # finished before we started
                st.last_status = job.get("status")
            self._jobs[st.uid] = st
        self._wakeup.set()

    def _on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        rec = self._pods.get((meta["namespace"], meta["name"]))
        if rec is None:
            return
        if event_type == "DELETED":
            rec.gone = rec.released = True
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            if not rec.deleting:
                rec.deleting = True
                rec.kill_reason = rec.kill_reason or "deleted"
            rec.kill.set()
            self._wakeup.set()

    # ------------------------------------------------------------ the Job controller

    async def _control(self) -> None:
        while True:
            await _wait_event(self._wakeup, self.interval)
            await asyncio.sleep(0.005)  # coalesce bursts of pod events into one sync
            self._wakeup.clear()
            for st in list(self._jobs.values()):
                try:
                    await self._sync(st)
                except (ApiError, aiohttp.ClientError, ConnectionError) as exc:
                    logger.warning("FakeKubelet: syncing Job %s/%s failed: %r", st.namespace, st.name, exc)
                except Exception as exc:
                    logger.exception("FakeKubelet: syncing Job %s/%s crashed", st.namespace, st.name)
                    self.errors.append(exc)
                if st.deleted and all(rec.released for rec in st.pods.values()):
                    self._jobs.pop(st.uid, None)

    async def _sync(self, st: _JobState) -> None:
        now = asyncio.get_running_loop().time()
        self._account_finished(st, now)
        for rec in list(st.pods.values()):
            if rec.phase in TERMINAL and not rec.released:
                await self._release(rec)
        if st.deleted:
            return  # the garbage collector deletes the pods (or they are orphans that finish on their own)
        if st.finished:
            await self._expire(st, now)
            return
        suspended = bool(st.spec.get("suspend"))
        if suspended:
            for rec in st.active():
                await self._delete_pod(rec, "suspended")
            if not st.has_condition("Suspended"):
                st.set_condition("Suspended", "True", "JobSuspended", "Job suspended")
        else:
            if st.has_condition("Suspended"):
                st.set_condition("Suspended", "False", "JobResumed", "Job resumed")
                st.start_time = None  # activeDeadlineSeconds restarts on resume
            if st.start_time is None:
                st.start_time, st.started_at = now_rfc3339(), now
            deadline = st.spec.get("activeDeadlineSeconds")
            if st.target is None and deadline is not None and now - (st.started_at or now) >= deadline:
                st.target = ("FailureTarget", "DeadlineExceeded", MSG_DEADLINE)
            self._check_completion(st)
        if st.target is not None:
            for rec in st.active():
                await self._delete_pod(rec, "job-finished")
            if st.target[0] == "FailureTarget" and not st.has_condition("FailureTarget"):
                st.set_condition("FailureTarget", "True", st.target[1], st.target[2])
            if st.target[0] == "SuccessCriteriaMet" and not st.has_condition("SuccessCriteriaMet"):
                st.set_condition("SuccessCriteriaMet", "True", st.target[1], st.target[2])
            if not st.live():
                final = "Complete" if st.target[0] == "SuccessCriteriaMet" else "Failed"
                st.set_condition(final, "True", st.target[1], st.target[2])
                if final == "Complete":
                    st.completion_time = now_rfc3339()
                st.finished, st.finished_at = True, now
        elif not suspended and not st.job["metadata"].get("deletionTimestamp"):
            await self._create_pods(st, now)
        st.max_active = max(st.max_active, len(st.active()))
        await self._write_job_status(st)

    def _account_finished(self, st: _JobState, now: float) -> None:
        """Count every pod that reached a terminal phase (synchronously: no pod can finish meanwhile)."""
        for rec in list(st.pods.values()):
            if rec.phase in TERMINAL and not rec.counted:
                rec.counted = True
                self._account(st, rec, now)

    def _account(self, st: _JobState, rec: PodRecord, now: float) -> None:
        """Fold a finished pod into the Job's counters, as the Job controller does."""
        spec = st.spec
        if rec.kill_reason == "suspended":
            return  # pods removed by suspension are not failures
        if rec.phase == "Succeeded":
            if not st.indexed:
                st.succeeded += 1
            elif rec.index not in st.failed_indexes:
                st.succeeded_indexes.add(int(rec.index or 0))
            return
        if st.target is not None:
            st.failed += 1  # killed because the Job is finishing
            return
        action, message = _pod_failure_action(spec.get("podFailurePolicy"), rec)
        if action == "Ignore":
            return
        st.failed += 1
        if action == "FailJob":
            st.target = ("FailureTarget", "PodFailurePolicy", message)
            return
        st.index_failures[rec.index] += 1
        per_index = spec.get("backoffLimitPerIndex")
        if st.indexed and per_index is not None:
            if action == "FailIndex" or st.index_failures[rec.index] > per_index:
                st.failed_indexes.add(int(rec.index or 0))
            max_failed = spec.get("maxFailedIndexes")
            if max_failed is not None and len(st.failed_indexes) > max_failed:
                st.target = ("FailureTarget", "MaxFailedIndexesExceeded", MSG_MAX_FAILED_INDEXES)
                return
        if st.failed > int(spec.get("backoffLimit", 6)):
            st.target = ("FailureTarget", "BackoffLimitExceeded", MSG_BACKOFF)
            return
        if self.retry_backoff:
            delay = min(self.retry_backoff * 2 ** (st.index_failures[rec.index] - 1), 360.0)
            st.retry_after[rec.index] = now + delay

    def _check_completion(self, st: _JobState) -> None:
        if st.target is not None:
            return
        if not st.indexed:
            if st.succeeded >= st.completions:
                st.target = ("SuccessCriteriaMet", "CompletionsReached", MSG_COMPLETE)
            return
        for i, rule in enumerate((st.spec.get("successPolicy") or {}).get("rules") or []):
            wanted = parse_ranges(rule["succeededIndexes"]) if rule.get("succeededIndexes") else None
            done = st.succeeded_indexes & wanted if wanted is not None else st.succeeded_indexes
            count = rule.get("succeededCount")
            if (count is not None and len(done) >= count) or (
                count is None and wanted is not None and done == wanted
            ):
                st.target = ("SuccessCriteriaMet", "SuccessPolicy", f"Matched rules at index {i}")
                return
        if len(st.succeeded_indexes) >= st.completions:
            st.target = ("SuccessCriteriaMet", "CompletionsReached", MSG_COMPLETE)
        elif st.failed_indexes and len(st.succeeded_indexes | st.failed_indexes) >= st.completions:
            st.target = ("FailureTarget", "FailedIndexes", MSG_FAILED_INDEXES)

    async def _create_pods(self, st: _JobState, now: float) -> None:
        # A pod may have finished during an await since the sync began: count it first, or its index
        # would look free and get a replacement the pod failure policy forbids.
        self._account_finished(st, now)
        if st.create_error is not None or st.target is not None:
            return
        spec = st.spec
        only_failed = spec.get("podReplacementPolicy") == "Failed"
        live = st.live()
        active = [rec for rec in live if not rec.deleting]
        terminating = [rec for rec in live if rec.deleting]
        slots = int(spec.get("parallelism", 1)) - len(active) - (len(terminating) if only_failed else 0)
        if slots <= 0:
            return
        if st.indexed:
            busy = {rec.index for rec in (live if only_failed else active)}
            done = st.succeeded_indexes | st.failed_indexes
            todo = (
                i
                for i in range(st.completions)
                if i not in done and i not in busy and st.retry_after.get(i, 0.0) <= now
            )
            for index in todo:
                if slots <= 0:
                    break
                await self._create_pod(st, index)
                slots -= 1
        elif st.retry_after.get(None, 0.0) <= now:
            missing = st.completions - st.succeeded - len(active) - (len(terminating) if only_failed else 0)
            for _ in range(max(0, min(slots, missing))):
                await self._create_pod(st, None)

    async def _create_pod(self, st: _JobState, index: int | None) -> None:
        spec = st.spec
        template = spec.get("template") or {}
        template_meta = template.get("metadata") or {}
        labels = {
            **(template_meta.get("labels") or {}),
            LABEL_CONTROLLER_UID: st.uid,
            LABEL_JOB_NAME: st.name,
            "controller-uid": st.uid,
            "job-name": st.name,
        }
        annotations = dict(template_meta.get("annotations") or {})
        pod_spec = copy.deepcopy(template.get("spec") or {})
        if index is not None:
            labels[LABEL_INDEX] = annotations[ANNOTATION_INDEX] = str(index)
            pod_spec.setdefault("hostname", f"{st.name}-{index}")
            for container in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
                env = container.setdefault("env", [])
                if not any(var.get("name") == "JOB_COMPLETION_INDEX" for var in env):
                    env.append(
                        {
                            "name": "JOB_COMPLETION_INDEX",
                            "valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD_PATH}},
                        }
                    )
            if spec.get("backoffLimitPerIndex") is not None:
                annotations[ANNOTATION_INDEX_FAILURES] = str(st.index_failures[index])
        hook = self._hooks.get((st.namespace, st.name))
        if hook is None or hook.kind != "unschedulable":
            pod_spec["nodeName"] = self.node_name
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{st.name}-{index}-" if index is not None else f"{st.name}-",
                "namespace": st.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": st.name,
                        "uid": st.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                **({"finalizers": [TRACKING_FINALIZER]} if self.tracking_finalizer else {}),
            },
            "spec": pod_spec,
        }
        try:
            pod = await self.api.create("v1/pods", body, st.namespace)
        except ApiError as exc:
            if exc.status >= 500:
                raise
            st.create_error = f"cannot create pods for Job {st.namespace}/{st.name}: {exc}"
            self.errors.append(RuntimeError(st.create_error))
            return
        name = pod["metadata"]["name"]
        rec = PodRecord(
            name, st.namespace, st.name, index, st.attempts[index], asyncio.get_running_loop().time()
        )
        st.attempts[index] += 1
        rec.pod_dir = self.workdir / st.namespace / name  # created by runners that need it
        st.pods[name] = rec
        self._pods[(st.namespace, name)] = rec
        rec.task = asyncio.create_task(self._run_pod(st, rec, pod))

    async def _write_job_status(self, st: _JobState) -> None:
        live = st.live()
        status: dict[str, Any] = {}
        if st.start_time:
            status["startTime"] = st.start_time
        if st.completion_time:
            status["completionTime"] = st.completion_time
        active = sum(1 for rec in live if not rec.deleting)
        if active:
            status["active"] = active
        status["ready"] = sum(1 for rec in live if not rec.deleting and rec.phase == "Running")
        status["terminating"] = sum(1 for rec in live if rec.deleting)
        succeeded = len(st.succeeded_indexes) if st.indexed else st.succeeded
        if succeeded:
            status["succeeded"] = succeeded
        if st.failed:
            status["failed"] = st.failed
        if st.indexed and st.succeeded_indexes:
            status["completedIndexes"] = format_ranges(st.succeeded_indexes)
        if st.spec.get("backoffLimitPerIndex") is not None:
            status["failedIndexes"] = format_ranges(st.failed_indexes)
        status["uncountedTerminatedPods"] = {}
        if st.conditions:
            status["conditions"] = copy.deepcopy(st.conditions)
        if status == st.last_status:
            return
        if not await self._replace_status("batch/v1/jobs", st.name, st.namespace, status):
            st.deleted = True
            return
        st.last_status = status

    async def _expire(self, st: _JobState, now: float) -> None:
        """ttlSecondsAfterFinished: delete the finished Job (and, in background, its pods)."""
        ttl = st.spec.get("ttlSecondsAfterFinished")
        if ttl is None or st.ttl_done or st.finished_at is None or now - st.finished_at < ttl:
            return
        st.ttl_done = True
        await self.api.delete(
            "batch/v1/jobs", st.name, st.namespace, propagation_policy="Background", missing_ok=True
        )

    async def _delete_pod(self, rec: PodRecord, reason: str) -> None:
        if rec.deleting:
            return
        rec.deleting = True
        rec.kill_reason = rec.kill_reason or reason
        rec.kill.set()
        try:
            await self.api.delete("v1/pods", rec.name, rec.namespace, propagation_policy="Background")
        except ApiError as exc:
            if exc.status != 404:
                raise
            rec.gone = rec.released = True

    async def _release(self, rec: PodRecord) -> None:
        """Remove the tracking finalizer of a finished pod (a deleted pod then disappears)."""
        if not self.tracking_finalizer or rec.gone:
            rec.released = True
            return
        # One request in the usual case: the finalizer we added first is still the first one.
        remove_first = [
            {"op": "test", "path": "/metadata/finalizers/0", "value": TRACKING_FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]
        try:
            await self.api.patch("v1/pods", rec.name, remove_first, rec.namespace, patch_type="json")
        except ApiError as exc:
            if exc.status == 422:  # someone reordered the finalizers: read, then write them back without ours
                pod = await self.api.get_or_none("v1/pods", rec.name, rec.namespace)
                finalizers = [f for f in ((pod or {}).get("metadata") or {}).get("finalizers") or []]
                if TRACKING_FINALIZER in finalizers:
                    rest = [f for f in finalizers if f != TRACKING_FINALIZER] or None
                    await self.api.patch(
                        "v1/pods", rec.name, {"metadata": {"finalizers": rest}}, rec.namespace
                    )
            elif exc.status != 404:
                raise
        rec.released = True

    # ------------------------------------------------------------ the kubelet

    async def _run_pod(self, st: _JobState, rec: PodRecord, pod: dict[str, Any]) -> None:
        processes: list[ContainerProcess] = []
        try:
            if not await self._wait_for_node(st, rec, pod):
                await self._finish(rec, pod, "Failed", [])
                return
            while True:
                try:
                    processes = await self._start_containers(st, rec, pod)
                    break
                except ContainerConfigError as exc:
                    await self._write_pod_status(rec, pod, _waiting_status(pod, rec, exc.reason, exc.message))
                    if await _wait_event(rec.kill, self.interval):
                        await self._finish(rec, pod, "Failed", [])
                        return
            rec.phase = "Running"
            self._wakeup.set()
            started = now_rfc3339()
            if self.report_running:
                await self._write_pod_status(rec, pod, _running_status(pod, rec, started))
            results = await self._wait_containers(rec, processes)
            phase = "Succeeded" if all(result.exit_code == 0 for result in results) else "Failed"
            names = [c["name"] for c in pod["spec"]["containers"]]
            await self._finish(rec, pod, phase, list(zip(names, results, strict=True)), started)
        except asyncio.CancelledError:
            if not self._stopping:  # Kopf's shutdown cancels every task created after it started
                logger.warning(
                    "FakeKubelet: pod %s/%s was cancelled from outside (an in-process Kopf operator "
                    "stopping?); its containers are killed and the pod stays %s",
                    rec.namespace,
                    rec.name,
                    rec.phase,
                )
            for process in processes:
                with contextlib.suppress(Exception):
                    await process.terminate(0.5)
            raise
        except Exception as exc:
            logger.exception("FakeKubelet: pod %s/%s crashed", rec.namespace, rec.name)
            self.errors.append(exc)
            rec.phase, rec.terminal_at = "Failed", asyncio.get_running_loop().time()
            self._wakeup.set()

    async def _wait_for_node(self, st: _JobState, rec: PodRecord, pod: dict[str, Any]) -> bool:
        """Honour block_scheduling/fail_image_pull; False if the pod was deleted while waiting."""
        reported: _Hook | None = None
        while not rec.kill.is_set():
            hook = self._hooks.get((st.namespace, st.name))
            if hook is None:
                break
            if hook != reported:
                reported = hook
                if hook.kind == "unschedulable":
                    status = {
                        "phase": "Pending",
                        "conditions": [_condition("PodScheduled", "False", "Unschedulable", hook.message)],
                    }
                else:
                    image = pod["spec"]["containers"][0].get("image", "")
                    message = (
                        hook.message
                        or f'Back-off pulling image "{image}": ErrImagePull: failed to pull image'
                    )
                    status = _waiting_status(pod, rec, "ImagePullBackOff", message)
                await self._write_pod_status(rec, pod, status)
            await _wait_event(rec.kill, self.interval)
        if rec.kill.is_set():
            return False
        if not pod["spec"].get("nodeName"):  # bind it now that it fits
            pod["spec"]["nodeName"] = self.node_name
            with contextlib.suppress(ApiError):
                await self.api.patch(
                    "v1/pods", rec.name, {"spec": {"nodeName": self.node_name}}, rec.namespace
                )
        return True

    async def _start_containers(
        self, st: _JobState, rec: PodRecord, pod: dict[str, Any]
    ) -> list[ContainerProcess]:
        """Run init containers to completion, then start the containers (all or none)."""
        pod_dir = rec.pod_dir or self.workdir

        def launch(container: dict[str, Any]) -> ContainerLaunch:
            return ContainerLaunch(
                job=st.job,
                pod=pod,
                container=container,
                index=rec.index,
                attempt=rec.attempt,
                pod_dir=pod_dir,
                log_path=pod_dir / f"{container['name']}.log",
                shared_dir=self.workdir,
                api=self.api,
            )

        for container in pod["spec"].get("initContainers") or []:
            result = await (await self.runner.start(launch(container))).wait()
            if result.exit_code != 0:
                raise ContainerConfigError(
                    "Init:Error", f"init container {container['name']} exited {result.exit_code}"
                )
        processes: list[ContainerProcess] = []
        try:
            for container in pod["spec"].get("containers") or []:
                processes.append(await self.runner.start(launch(container)))
        except BaseException:
            for process in processes:
                await process.terminate(0)
            raise
        return processes

    async def _wait_containers(
        self, rec: PodRecord, processes: list[ContainerProcess]
    ) -> list[ContainerResult]:
        waits = [asyncio.ensure_future(process.wait()) for process in processes]
        killed = asyncio.ensure_future(rec.kill.wait())
        try:
            await asyncio.wait([*waits, killed], return_when=asyncio.FIRST_COMPLETED)
            while not killed.done() and not all(w.done() for w in waits):
                await asyncio.wait(
                    [*[w for w in waits if not w.done()], killed], return_when=asyncio.FIRST_COMPLETED
                )
            if killed.done():
                for process, wait in zip(processes, waits, strict=True):
                    if not wait.done():
                        await process.terminate(self.grace_period)
            return [await wait for wait in waits]
        finally:
            killed.cancel()

    async def _finish(
        self,
        rec: PodRecord,
        pod: dict[str, Any],
        phase: str,
        results: list[tuple[str, ContainerResult]],
        started: str | None = None,
    ) -> None:
        rec.results = results
        await self._write_pod_status(rec, pod, _terminal_status(pod, rec, phase, started))
        rec.phase, rec.terminal_at = phase, asyncio.get_running_loop().time()
        self._wakeup.set()

    async def _write_pod_status(self, rec: PodRecord, pod: dict[str, Any], status: dict[str, Any]) -> None:
        if rec.gone:
            return
        status["conditions"] = [*status.get("conditions", []), *rec.conditions]
        if not await self._replace_status("v1/pods", rec.name, rec.namespace, status):
            rec.gone = rec.released = True

    async def _replace_status(self, resource: str, name: str, namespace: str, status: dict[str, Any]) -> bool:
        """Write the whole ``.status`` through the status subresource; False if the object is gone."""
        try:
            await self.api.patch(
                resource,
                name,
                [{"op": "add", "path": "/status", "value": status}],
                namespace,
                subresource="status",
                patch_type="json",
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            return False
        return True


# ---------------------------------------------------------------- pod failure policy and pod status


def _pod_failure_action(policy: dict[str, Any] | None, rec: PodRecord) -> tuple[str, str]:
    """The action of the first matching podFailurePolicy rule (Count when none matches) and its message."""
    pod_ref = f"{rec.namespace}/{rec.name}"
    for i, rule in enumerate((policy or {}).get("rules") or []):
        action = rule["action"]
        on_exit = rule.get("onExitCodes")
        if on_exit is not None:
            for name, result in rec.results:
                if on_exit.get("containerName") not in (None, name) or result.exit_code == 0:
                    continue
                if (result.exit_code in on_exit["values"]) == (on_exit["operator"] == "In"):
                    return action, (
                        f"Container {name} for pod {pod_ref} failed with exit code "
                        f"{result.exit_code} matching {action} rule at index {i}"
                    )
        for pattern in rule.get("onPodConditions") or []:
            for condition in rec.conditions:
                if condition["type"] == pattern["type"] and condition["status"] == pattern.get(
                    "status", "True"
                ):
                    return (
                        action,
                        f"Pod {pod_ref} has condition {pattern['type']} matching {action} rule at index {i}",
                    )
    return "Count", ""


def _condition(
    type_: str, status: str, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now_rfc3339(),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _container_base(container: dict[str, Any], pod_name: str) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "containerID": f"fake://{pod_name}/{container['name']}",
        "restartCount": 0,
    }


def _waiting_status(pod: dict[str, Any], rec: PodRecord, reason: str, message: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "hostIP": "127.0.0.1",
        "qosClass": "BestEffort",
        "conditions": [
            _condition("PodScheduled", "True"),
            _condition("Initialized", "True"),
            _condition("Ready", "False", "ContainersNotReady"),
            _condition("ContainersReady", "False", "ContainersNotReady"),
        ],
        "containerStatuses": [
            {
                **_container_base(c, rec.name),
                "ready": False,
                "started": False,
                "state": {"waiting": {"reason": reason, "message": message}},
            }
            for c in pod["spec"].get("containers") or []
        ],
    }


def _running_status(pod: dict[str, Any], rec: PodRecord, started: str) -> dict[str, Any]:
    return {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "10.42.0.1",
        "startTime": started,
        "qosClass": "BestEffort",
        "conditions": [
            _condition("PodReadyToStartContainers", "True"),
            _condition("Initialized", "True"),
            _condition("Ready", "True"),
            _condition("ContainersReady", "True"),
            _condition("PodScheduled", "True"),
        ],
        "containerStatuses": [
            {
                **_container_base(c, rec.name),
                "ready": True,
                "started": True,
                "state": {"running": {"startedAt": started}},
            }
            for c in pod["spec"].get("containers") or []
        ],
    }


def _terminal_status(pod: dict[str, Any], rec: PodRecord, phase: str, started: str | None) -> dict[str, Any]:
    finished = now_rfc3339()
    results = dict(rec.results)
    statuses = []
    for container in pod["spec"].get("containers") or []:
        result = results.get(container["name"])
        if result is None:  # never started: deleted while pending
            state: dict[str, Any] = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": None,
                    "finishedAt": finished,
                }
            }
        else:
            terminated = {
                "exitCode": result.exit_code,
                "reason": result.terminated_reason,
                "startedAt": started,
                "finishedAt": finished,
                "containerID": f"fake://{rec.name}/{container['name']}",
            }
            if result.message:
                terminated["message"] = result.message
            state = {"terminated": terminated}
        statuses.append(
            {**_container_base(container, rec.name), "ready": False, "started": False, "state": state}
        )
    return {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": "10.42.0.1",
        "startTime": started or finished,
        "qosClass": "BestEffort",
        "conditions": [
            _condition("PodReadyToStartContainers", "False"),
            _condition("Initialized", "True"),
            _condition("Ready", "False", "PodCompleted"),
            _condition("ContainersReady", "False", "PodCompleted"),
            _condition("PodScheduled", "True"),
        ],
        "containerStatuses": statuses,
    }


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that arrives as the
    inner wait completes, which left a cancelled kubelet looping for ever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
