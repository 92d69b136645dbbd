"""The Argo CD health check (deploy/argocd/health.lua), run in Lua 5.1 (as Argo CD's gopher-lua) through
lupa against statuses built with synthrec's own models and condition helpers."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthrec.api import Progress, RecognitionExperimentStatus, SyntheticDatasetStatus
from synthrec.api.conditions import derive_phase, set_condition

lua51 = pytest.importorskip("lupa.lua51")

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "health.lua"
KINDS = ("SyntheticDataset", "RecognitionExperiment")
KEYS = [f"resource.customizations.health.synthrec.io_{kind}" for kind in KINDS]
# How each printed phase shows in Argo CD.
PHASE_HEALTH = {
    "Succeeded": "Healthy",
    "Failed": "Degraded",
    "Suspended": "Suspended",
    "Running": "Progressing",
    "Queued": "Progressing",
    "Pending": "Progressing",
}
NOW = "2026-01-01T00:00:00Z"


def _to_lua(runtime: Any, value: Any) -> Any:
    # Argo CD hands the object to Lua as nested tables (JSON arrays become 1-based sequences).
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the check like Argo CD: a fresh Lua state, the resource as global ``obj``, a table returned."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(script or HEALTH_LUA.read_text())
    return dict(result.items())


def resource(kind: str, status: Any | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "synthrec.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "demo", "namespace": "team-a", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status.wire() if hasattr(status, "wire") else status
    return obj


def status_for(kind: str, conditions: list[dict[str, Any]], **fields: Any) -> Any:
    model = SyntheticDatasetStatus if kind == "SyntheticDataset" else RecognitionExperimentStatus
    return model(conditions=conditions, phase=derive_phase(conditions), observed_generation=1, **fields)


def conds(*settings: tuple[str, bool, str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ctype, value, reason, message in settings:
        out = set_condition(out, ctype, value, reason, message, generation=1, now=NOW)
    return out


# ------------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("kind", KINDS)
def test_every_combination_of_conditions_maps_like_the_derived_phase(kind: str) -> None:
    """Exhaustive over the condition types the operator sets: health follows derive_phase()."""
    types = ("Accepted", "Queued", "Running", "Suspended", "Degraded", "Complete", "Failed")
    for truth in itertools.product((False, True), repeat=len(types)):
        conditions = conds(*[(t, v, "Test", f"{t} is {v}") for t, v in zip(types, truth, strict=True)])
        phase = derive_phase(conditions)
        result = health(resource(kind, status_for(kind, conditions)))
        assert result["status"] == PHASE_HEALTH[phase], (dict(zip(types, truth, strict=True)), phase, result)
        assert result["message"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_resource_without_status_is_progressing(kind: str) -> None:
    assert health(resource(kind, None)) == {
        "status": "Progressing",
        "message": "Waiting for the synthrec operator to pick up the resource",
    }


def test_failed_is_degraded_with_the_reason_and_message() -> None:
    conditions = conds(
        ("Running", True, "ShardsRunning", "generate 3/20"),
        ("Failed", True, "ShardsFailed", "generate: shards 4,7 failed 3 times (exit 42: corrupt real image)"),
    )
    result = health(resource("SyntheticDataset", status_for("SyntheticDataset", conditions)))
    assert result == {
        "status": "Degraded",
        "message": "ShardsFailed: generate: shards 4,7 failed 3 times (exit 42: corrupt real image)",
    }


def test_complete_is_healthy() -> None:
    conditions = conds(("Complete", True, "Succeeded", "12 runs, best top-1 0.712"))
    result = health(resource("RecognitionExperiment", status_for("RecognitionExperiment", conditions)))
    assert result == {"status": "Healthy", "message": "Succeeded: 12 runs, best top-1 0.712"}


def test_suspended_is_suspended() -> None:
    conditions = conds(
        ("Running", False, "Suspended", ""), ("Suspended", True, "Suspended", "spec.runPolicy.suspend")
    )
    result = health(resource("SyntheticDataset", status_for("SyntheticDataset", conditions)))
    assert result == {"status": "Suspended", "message": "Suspended: spec.runPolicy.suspend"}


def test_running_shows_the_stage_and_progress() -> None:
    conditions = conds(("Accepted", True, "Valid", ""), ("Running", True, "StageRunning", "generate"))
    status = status_for(
        "SyntheticDataset", conditions, progress=Progress(stage="generate", percent=62, summary="40/64")
    )
    assert health(resource("SyntheticDataset", status)) == {
        "status": "Progressing",
        "message": "Running: generate 40/64 (62%)",
    }


def test_degraded_while_running_stays_progressing_and_says_why() -> None:
    conditions = conds(
        ("Running", True, "StageRunning", "generate"),
        ("Degraded", True, "PodsUnschedulable", "0/8 nodes are available: 8 Insufficient nvidia.com/gpu"),
    )
    result = health(resource("SyntheticDataset", status_for("SyntheticDataset", conditions)))
    assert result == {
        "status": "Progressing",
        "message": "Degraded: PodsUnschedulable: 0/8 nodes are available: 8 Insufficient nvidia.com/gpu",
    }


def test_queued_by_kueue_is_progressing_with_the_queue_message() -> None:
    conditions = conds(("Queued", True, "WaitingForQuota", "Kueue: waiting in gpu-batch"))
    result = health(resource("SyntheticDataset", status_for("SyntheticDataset", conditions)))
    assert result == {
        "status": "Progressing",
        "message": "Queued: WaitingForQuota: Kueue: waiting in gpu-batch",
    }


def test_an_experiment_waiting_for_its_dataset_says_so() -> None:
    conditions = conds(
        ("Accepted", True, "Valid", ""), ("DatasetReady", False, "DatasetNotReady", "eurosat-le-cf")
    )
    result = health(resource("RecognitionExperiment", status_for("RecognitionExperiment", conditions)))
    assert result == {
        "status": "Progressing",
        "message": "Waiting for datasets: DatasetNotReady: eurosat-le-cf",
    }


def test_an_unobserved_spec_change_is_progressing_until_the_operator_catches_up() -> None:
    conditions = conds(("Running", True, "StageRunning", "generate"))
    obj = resource("SyntheticDataset", status_for("SyntheticDataset", conditions), generation=2)
    assert health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 2",
    }
    # Terminal states are sticky: a later edit of a finished resource does not make it Progressing.
    done = resource(
        "SyntheticDataset", status_for("SyntheticDataset", conds(("Complete", True, "Done", ""))), 3
    )
    assert health(done)["status"] == "Healthy"


@pytest.mark.parametrize(("phase", "expected"), sorted(PHASE_HEALTH.items()))
def test_a_status_without_conditions_falls_back_to_the_phase(phase: str, expected: str) -> None:
    result = health(resource("SyntheticDataset", {"phase": phase, "message": "from the phase"}))
    assert result == {"status": expected, "message": f"{phase}: from the phase"}


# ---------------------------------------------------------------------------------------- distribution


def test_the_argocd_cm_patch_and_the_argo_cd_chart_values_carry_the_same_lua_for_both_kinds() -> None:
    lua = HEALTH_LUA.read_text()
    patch = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    assert {k: patch["data"][k] for k in KEYS} == dict.fromkeys(KEYS, lua)
    values = yaml.safe_load((ROOT / "deploy" / "argocd" / "argo-cd-values.yaml").read_text())
    assert {k: values["configs"]["cm"][k] for k in KEYS} == dict.fromkeys(KEYS, lua)


def test_the_chart_readme_ships_the_same_lua() -> None:
    readme = (ROOT / "helm" / "synthrec" / "README.md").read_text()
    snippet = readme.split("```yaml\n# argocd-cm health checks\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(snippet)["data"]
    assert {k: data[k] for k in KEYS} == dict.fromkeys(KEYS, HEALTH_LUA.read_text())
