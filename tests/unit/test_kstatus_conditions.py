"""Ready, Reconciling and Stalled (kstatus) follow the other conditions, derived where the phase is."""

from __future__ import annotations

from typing import Any

import pytest

from synthrec.api.conditions import derive, get, set_condition


def _with(*conditions: tuple[str, bool, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ctype, status, reason in conditions:
        out = set_condition(out, ctype, status, reason, f"{ctype} because {reason}", generation=3, now="t0")
    return out


def _summary(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {
        t: (get(conditions, t)["status"], get(conditions, t)["reason"])
        for t in ("Ready", "Reconciling", "Stalled")
    }


@pytest.mark.parametrize(
    ("conditions", "phase", "expected"),
    [
        (
            [("Accepted", True, "Valid")],
            "Pending",
            {
                "Ready": ("False", "Pending"),
                "Reconciling": ("True", "Pending"),
                "Stalled": ("False", "Pending"),
            },
        ),
        (
            [("Accepted", True, "Valid"), ("Queued", True, "WaitingForQuota")],
            "Queued",
            {"Ready": ("False", "Queued"), "Reconciling": ("True", "Queued"), "Stalled": ("False", "Queued")},
        ),
        (
            [("Accepted", True, "Valid"), ("Running", True, "ShardsRunning")],
            "Running",
            {
                "Ready": ("False", "Running"),
                "Reconciling": ("True", "Running"),
                "Stalled": ("False", "Running"),
            },
        ),
        (
            [("Running", False, "Done"), ("Complete", True, "AllStagesComplete")],
            "Succeeded",
            {
                "Ready": ("True", "AllStagesComplete"),
                "Reconciling": ("False", "AllStagesComplete"),
                "Stalled": ("False", "AllStagesComplete"),
            },
        ),
        (
            [("Running", True, "ShardsRunning"), ("Failed", True, "ShardBudgetExceeded")],
            "Failed",
            {
                "Ready": ("False", "ShardBudgetExceeded"),
                "Reconciling": ("False", "Failed"),
                "Stalled": ("True", "ShardBudgetExceeded"),
            },
        ),
        (
            [("Suspended", True, "UserSuspended")],
            "Suspended",
            {
                "Ready": ("False", "Suspended"),
                "Reconciling": ("False", "Suspended"),
                "Stalled": ("False", "Suspended"),
            },
        ),
    ],
)
def test_summary_conditions_follow_the_phase(
    conditions: list[tuple[str, bool, str]], phase: str, expected: dict[str, tuple[str, str]]
) -> None:
    derived_phase, derived = derive(_with(*conditions), generation=3, now="t1")
    assert derived_phase == phase
    assert _summary(derived) == expected
    assert all(get(derived, t)["observedGeneration"] == 3 for t in expected)


def test_a_failure_carries_its_message_into_ready_and_stalled() -> None:
    _, derived = derive(_with(("Failed", True, "InvalidSpec")), generation=1)
    assert (
        get(derived, "Ready")["message"] == get(derived, "Stalled")["message"] == "Failed because InvalidSpec"
    )


def test_ready_keeps_its_transition_time_while_its_status_holds() -> None:
    _, first = derive(_with(("Running", True, "ShardsRunning")), generation=1, now="t1")
    _, second = derive(first, generation=1, now="t2")
    assert get(second, "Ready")["lastTransitionTime"] == "t1"
    _, done = derive(set_condition(second, "Complete", True, "Done", now="t3"), generation=1, now="t3")
    assert get(done, "Ready")["lastTransitionTime"] == "t3"
