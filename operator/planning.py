"""Planning: (spec, persisted status, observed children) -> actions. Pure functions, no I/O.

The reconciler calls :func:`plan` on every pass (level-triggered): it reads the resource, its child Jobs
and Pods (and, for an experiment, the referenced datasets), and gets back the Jobs and ConfigMaps to
create, the Jobs to delete or patch, and the status to write. Nothing here remembers anything between
calls: what must survive a restart lives in status.

One pass of one resource is a :class:`~synthrec.operator.reconcile_pass.Pass` (the opening and closing
both kinds share); planning_dataset.py plans a SyntheticDataset (its stages through the shared stage
decision, ``synthrec.plan.decision``), planning_experiment.py a RecognitionExperiment (pinned datasets,
runs within the parallelism budget).

Two rules make it safe to lose the operator at any moment:
- a child Job is destroyed (TTL, suspend) only after its results are in the *persisted* status;
- names are deterministic (``<resource>-<stage>-a<attempt>``, ``<resource>-r<run>-a<attempt>``), so a
  plan repeated after a crash creates nothing twice (409 on create is success).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import ValidationError

from synthrec import api
from synthrec.operator.jobs import Owner
from synthrec.operator.planning_dataset import plan_dataset
from synthrec.operator.planning_experiment import plan_experiment
from synthrec.operator.reconcile_pass import (
    Actions,
    Context,
    Create,
    Observed,
    Pass,
    finish_status,
    name_taken,
    status_model,
)
from synthrec.operator.status import Conditions

__all__ = [
    "Actions",
    "Context",
    "Create",
    "Observed",
    "blocked_status",
    "describe_error",
    "fail_status",
    "parse_spec",
    "plan",
]


def plan(body: dict[str, Any], observed: Observed, ctx: Context) -> Actions:
    """Plan one reconcile pass of a SyntheticDataset or RecognitionExperiment ``body`` (as from the API)."""
    kind = str(body.get("kind"))
    meta = body.get("metadata") or {}
    owner = Owner(kind, str(meta.get("name")), str(meta.get("namespace") or ""), str(meta.get("uid") or ""))
    generation = meta.get("generation")
    persisted = body.get("status") or {}
    observed = observed.controlled_by(owner.uid)
    try:
        api.ObjectMeta.model_validate({"name": owner.name})
        spec = parse_spec(kind, json.dumps(body.get("spec") or {}, sort_keys=True))
    except (ValidationError, ValueError, KeyError) as exc:
        actions = _invalid(kind, generation, persisted, observed, ctx, describe_error(exc))
        actions.foreign = list(observed.foreign)
        return actions
    refused = refused_output(spec.output.uri)
    if refused is not None:
        actions = _invalid(kind, generation, persisted, observed, ctx, refused, reason="UnsupportedOutput")
        actions.foreign = list(observed.foreign)
        return actions
    p = Pass.open(owner, generation, spec, persisted, observed, ctx)
    actions = plan_dataset(p) if kind == "SyntheticDataset" else plan_experiment(p)
    actions.foreign = list(observed.foreign)
    return actions


@functools.lru_cache(maxsize=512)
def parse_spec(kind: str, spec_json: str) -> Any:
    """The validated spec model (CEL rules included: the costly part of a plan, hence the cache; the planner
    never mutates it)."""
    return api.KIND_INFO[kind].spec.model_validate(json.loads(spec_json))


def describe_error(exc: Exception) -> str:
    """A pydantic error as one line per problem, with the field path in the wire (camelCase) form."""
    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors()[:10]:
            loc = ".".join(_camel(str(p)) for p in err.get("loc", ()))
            where = f"spec.{loc}" if loc and not loc.startswith("name") else (loc or "spec")
            lines.append(f"{where}: {err.get('msg')}")
        return "; ".join(lines)
    if isinstance(exc, KeyError):
        return f"unknown kind {exc}"
    return str(exc)


def _camel(part: str) -> str:
    head, *rest = part.split("_")
    return head + "".join(p.title() for p in rest)


def refused_output(uri: str) -> str | None:
    """Why the operator cannot run a resource with this output URI, or None.

    A file:// output would be written into each worker pod's own filesystem (an emptyDir that goes with
    the pod): the artifacts would be scattered over pods and lost, and no later stage could read them."""
    if uri.startswith("file://"):
        return (
            f"spec.output.uri {uri} is a file:// folder: on a cluster it would land in each worker pod's "
            "own emptyDir and vanish with the pod. Use an s3:// URI (MinIO, Ceph and GCS/R2 in S3 mode work "
            "too); file:// outputs are for `synthrec run` on one machine. spec.output is immutable: create a "
            "new resource with an s3:// output"
        )
    return None


def _invalid(
    kind: str,
    generation: int | None,
    persisted: dict[str, Any],
    observed: Observed,
    ctx: Context,
    message: str,
    *,
    reason: str = "InvalidSpec",
) -> Actions:
    """A spec the operator cannot run (invalid past the schema, or an output it refuses): Failed with
    ``reason`` and Accepted=False, and no Jobs."""
    status = status_model(kind, persisted)
    conds = Conditions(status.conditions and [c.wire() for c in status.conditions], generation, ctx.stamp)
    conds.set("Accepted", False, reason, message)
    prefix = "the spec is invalid: " if reason == "InvalidSpec" else ""
    conds.set("Failed", True, reason, f"{prefix}{message}")
    conds.stop_activity(reason)
    status.message = (f"invalid spec: {message}" if reason == "InvalidSpec" else message)[:4096]
    status.completion_time = status.completion_time or ctx.stamp
    actions = Actions(status={})
    for job in observed.jobs:  # a spec that became invalid (never via the API server) stops its Jobs
        if not job.finished and not job.deleting:
            actions.delete_jobs.append(job.name)
    finish_status(status, conds, generation)
    actions.status = status.wire()
    return actions


def fail_status(
    kind: str, status: dict[str, Any], body: dict[str, Any], reason: str, message: str, stamp: str
) -> dict[str, Any]:
    """``status`` with Failed=True (for failures found while applying a plan, e.g. a rejected Job)."""
    model = status_model(kind, status)
    generation = (body.get("metadata") or {}).get("generation")
    conds = Conditions([c.wire() for c in model.conditions], generation, stamp)
    conds.set("Failed", True, reason, message)
    conds.stop_activity(reason)
    model.message = message[:4096]
    model.completion_time = model.completion_time or stamp
    finish_status(model, conds, generation)
    return model.wire()


def blocked_status(
    kind: str, status: dict[str, Any], body: dict[str, Any], names: list[str], stamp: str
) -> dict[str, Any]:
    """``status`` with Degraded=True: Jobs the resource does not control hold the names of Jobs it must
    create (found while applying a plan: such Jobs need not carry our labels, so the plan missed them)."""
    model = status_model(kind, status)
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    owner = Owner(kind, str(meta.get("name")), str(meta.get("namespace") or ""), str(meta.get("uid") or ""))
    conds = Conditions([c.wire() for c in model.conditions], generation, stamp)
    name_taken(conds, owner, names)
    finish_status(model, conds, generation)
    return model.wire()
