"""Conditions are the source of truth of a resource's state; ``phase`` and the kstatus summary
conditions (Ready, Reconciling, Stalled) are derived from them here, once (:func:`derive`).

Rules (operator anchors §3.2): at most one of Complete/Failed is True and terminal states are sticky;
``lastTransitionTime`` changes only when a condition's status changes; every condition carries the
``observedGeneration`` it was computed for.

kstatus (what Flux health checks, Argo CD, ``helm --wait`` and ``kubectl wait --for=condition=Ready``
read): ``Ready`` is True once the work is Complete and False with the reason otherwise; ``Reconciling``
is True while the operator still works towards the spec (Pending, Queued, Running); ``Stalled`` is True
when it has Failed and will not go on by itself. A Suspended resource is neither Ready nor Reconciling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from synthrec.api import Condition, Phase
from synthrec.timestamps import utc_stamp

TERMINAL = ("Complete", "Failed")
SUMMARY = ("Ready", "Reconciling", "Stalled")  # derived by derive(), never set by hand


def _as_dicts(conditions: Iterable[Condition | dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for c in conditions or []:
        out.append(c.wire() if isinstance(c, Condition) else dict(c))
    return out


def get(conditions: Iterable[Condition | dict[str, Any]] | None, ctype: str) -> dict[str, Any] | None:
    for c in _as_dicts(conditions):
        if c.get("type") == ctype:
            return c
    return None


def is_true(conditions: Iterable[Condition | dict[str, Any]] | None, ctype: str) -> bool:
    c = get(conditions, ctype)
    return bool(c and c.get("status") == "True")


def is_terminal(conditions: Iterable[Condition | dict[str, Any]] | None) -> bool:
    return any(is_true(conditions, t) for t in TERMINAL)


def set_condition(
    conditions: Iterable[Condition | dict[str, Any]] | None,
    ctype: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``ctype`` set; other conditions are kept in order.

    Setting Complete or Failed to True makes the other one False: exactly one terminal condition.
    """
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    stamp = now or utc_stamp()
    out = _as_dicts(conditions)
    updated = {
        "type": ctype,
        "status": status_str,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": stamp,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    for i, c in enumerate(out):
        if c.get("type") == ctype:
            if c.get("status") == status_str:
                updated["lastTransitionTime"] = c.get("lastTransitionTime", stamp)
            out[i] = updated
            break
    else:
        out.append(updated)
    if ctype in TERMINAL and status_str == "True":
        other = "Failed" if ctype == "Complete" else "Complete"
        if is_true(out, other):
            out = set_condition(
                out, other, False, "Superseded", f"{ctype} is terminal", generation=generation, now=stamp
            )
    return out


def derive_phase(conditions: Iterable[Condition | dict[str, Any]] | None) -> Phase:
    """The one place that maps conditions to the printed phase."""
    conds = _as_dicts(conditions)
    if is_true(conds, "Failed"):
        return "Failed"
    if is_true(conds, "Complete"):
        return "Succeeded"
    if is_true(conds, "Suspended"):
        return "Suspended"
    if is_true(conds, "Running"):
        return "Running"
    if is_true(conds, "Queued"):
        return "Queued"
    return "Pending"


def derive(
    conditions: Iterable[Condition | dict[str, Any]] | None, *, generation: int | None, now: str | None = None
) -> tuple[Phase, list[dict[str, Any]]]:
    """The phase and the condition list with Ready, Reconciling and Stalled set from the others."""
    conds = _as_dicts(conditions)
    phase = derive_phase(conds)
    failed, complete = get(conds, "Failed"), get(conds, "Complete")
    if phase == "Failed" and failed is not None:
        reason, message = str(failed.get("reason") or "Failed"), str(failed.get("message") or "")
        summary = {"Ready": (False, reason), "Reconciling": (False, "Failed"), "Stalled": (True, reason)}
    elif phase == "Succeeded" and complete is not None:
        reason, message = str(complete.get("reason") or "Succeeded"), str(complete.get("message") or "")
        summary = {"Ready": (True, reason), "Reconciling": (False, reason), "Stalled": (False, reason)}
    else:
        source = get(conds, phase if phase != "Pending" else "Accepted")
        message = str((source or {}).get("message") or "")
        if phase == "Suspended":
            summary = {"Ready": (False, phase), "Reconciling": (False, phase), "Stalled": (False, phase)}
        else:
            summary = {"Ready": (False, phase), "Reconciling": (True, phase), "Stalled": (False, phase)}
    for ctype, (status, reason) in summary.items():
        conds = set_condition(conds, ctype, status, reason, message, generation=generation, now=now)
    return phase, conds
