"""CEL rules: declared once on the API models, enforced by the API server (CRD x-kubernetes-validations),
by ``synthrec validate`` and by pydantic when a spec is parsed anywhere else (operator, local mode).

cel-python evaluates the same expressions the API server does for the subset we use (has, all, exists,
size, matches, startsWith, contains, arithmetic and comparisons).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry.

    ``field_path`` (relative, e.g. ``.parallelism``) points the error at a field, as the API server does.
    ``transition`` rules compare with ``oldSelf`` and are only checked on updates.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None  # FieldValueInvalid (default), FieldValueForbidden, FieldValueRequired, ...
    transition: bool = False

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class CelEvaluationError(RuntimeError):
    """The rule itself could not be evaluated (a bug in the rule, not in the user's input)."""


@lru_cache(maxsize=512)
def _program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def evaluate(rule: str, self_value: Any, old_self: Any = None) -> bool:
    """Evaluate ``rule`` with ``self`` (and ``oldSelf``) bound to JSON-like Python values."""
    import celpy

    activation = {"self": celpy.json_to_cel(self_value)}
    if old_self is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_self)
    try:
        result = _program(rule).evaluate(activation)
    except Exception as exc:  # celpy raises its own error types for missing fields and overloads
        raise CelEvaluationError(f"CEL rule {rule!r} could not be evaluated: {exc}") from exc
    if isinstance(result, Exception):
        raise CelEvaluationError(f"CEL rule {rule!r} could not be evaluated: {result}")
    return bool(result)


def rule_is_transition(rule: str) -> bool:
    return "oldSelf" in rule
