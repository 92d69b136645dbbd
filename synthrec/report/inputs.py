"""What the report reads besides the artifacts module's states: JSON-lines files and JSON documents from
storage, each parsed into its typed model (synthrec.contract) with a size cap. A missing one is None; a
damaged or planted one becomes a note for the page (``Problem``), never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from synthrec.contract.base import DocumentError, Lines, parse_lines
from synthrec.limits import bounded
from synthrec.storage import MAX_JSON_BYTES, ObjectNotFound, ObjectTooLarge, Storage

T = TypeVar("T")

MAX_LINES_BYTES = 512 * 1024 * 1024  # kept.jsonl of a 1.2M-image dataset is about 200 MB


def read_lines(storage: Storage, key: str, parse: Callable[[str], T]) -> tuple[Lines[T], str | None]:
    """The rows of a JSON-lines object (none when it is missing) and a note on what could not be read."""
    try:
        data = storage.read_bytes(key, max_bytes=MAX_LINES_BYTES)
    except ObjectNotFound:
        return Lines(), None
    except ObjectTooLarge as exc:
        return Lines(), bounded(str(exc))
    lines = parse_lines(data, parse)
    return lines, lines.note(storage.url(key))


def read_document(
    storage: Storage, key: str, parse: Callable[[bytes, str], T]
) -> tuple[T | None, str | None]:
    """A JSON document parsed by ``parse(raw, where)`` (a contract ``parse_*``), or None and a note."""
    try:
        raw = storage.read_bytes(key, max_bytes=MAX_JSON_BYTES)
    except ObjectNotFound:
        return None, None
    except ObjectTooLarge as exc:
        return None, bounded(str(exc))
    try:
        return parse(raw, storage.url(key)), None
    except DocumentError as exc:
        return None, bounded(str(exc))
