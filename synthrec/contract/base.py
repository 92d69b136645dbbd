"""What the typed artifacts share: strict parts (unknown fields are an error) and one way to parse a
document that says where it came from and what was wrong."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


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
