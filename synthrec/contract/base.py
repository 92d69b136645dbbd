"""What the typed artifacts share: strict parts (unknown fields are an error) and one way to parse a
document that says where it came from and what was wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentError(ValueError):
    """Bytes that are not the synthrec document they should be; the message says where and why."""


def parse_document(model: type[M], raw: bytes | str, where: str) -> M:
    """``raw`` (JSON) as ``model``; DocumentError naming ``where`` and the first problem."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "(document)"
        raise DocumentError(
            f"{where} is not a {model.__name__} of this synthrec version: {loc}: {first['msg']}"
        ) from None


@dataclass
class Lines(Generic[T]):
    """The rows of a JSON-lines file that parsed, and what was wrong with the others."""

    rows: list[T] = field(default_factory=list)
    bad: int = 0
    first_problem: str | None = None

    def note(self, where: str) -> str | None:
        """One line for a reader to show, or None when every line parsed."""
        if not self.bad:
            return None
        return f"{where}: {self.bad} unreadable line(s) skipped; the first: {self.first_problem}"


def parse_lines(data: bytes, parse: Callable[[str], T]) -> Lines[T]:
    """Each non-empty line parsed by ``parse`` (which raises ValueError on a bad line); a bad line is
    counted and skipped, so one damaged line does not hide the others."""
    out: Lines[T] = Lines()
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.rows.append(parse(line))
        except (ValueError, TypeError) as exc:
            out.bad += 1
            if out.first_problem is None:
                out.first_problem = f"line {number}: {str(exc)[:200]}"
    return out
