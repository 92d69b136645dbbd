"""What ``synthrec run`` runs: the resources of a file, validated, re-rooted under the storage and
selected, and the errors that stop a run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthrec import api
from synthrec.contract.layout import StorageLayout
from synthrec.storage import Storage, StorageError, open_storage
from synthrec.tiny.layout import references_random_tiny, references_toy_world

Resource = api.SyntheticDataset | api.RecognitionExperiment

STORAGE_FROM_SPEC = "spec"
DEFAULT_STORAGE_DIR = "synthrec-out"


class RunError(Exception):
    """The run cannot start or cannot go on; the message says what was wrong and what to do."""


class Interrupted(RunError):
    """Ctrl-C or SIGTERM: the workers were stopped; committed shards are kept."""


def load_resources(path: str | Path) -> list[Resource]:
    """The resources of a file, validated exactly as ``synthrec validate`` does (same messages)."""
    from synthrec.api.validation import FileError, load_documents, validate_resource

    try:
        docs = load_documents(path)
    except FileError as exc:
        raise RunError(str(exc)) from None
    problems = []
    for doc in docs:
        for problem in validate_resource(doc.body):
            problems.append(f"{path}: document {doc.index} ({doc.label}): {problem}")
    if problems:
        raise RunError("\n".join(problems) + "\nnothing was run; `synthrec validate` shows the same problems")
    resources = [api.parse_resource(doc.body) for doc in docs]
    seen: dict[tuple[str, str], int] = {}
    for doc, res in zip(docs, resources, strict=True):
        key = (res.kind, res.metadata.name)
        if key in seen:
            raise RunError(
                f"{path}: document {doc.index}: {res.kind} {res.metadata.name!r} is already defined in "
                f"document {seen[key]}; names must be unique per kind"
            )
        seen[key] = doc.index
    return resources


def storage_root(value: str | None, cwd: Path | None = None) -> str | None:
    """The storage root URI for ``--storage``: None for 'spec' (each resource keeps its output.uri)."""
    if value == STORAGE_FROM_SPEC:
        return None
    from synthrec.storage.uris import URIError, parse_storage_uri

    if value is None:
        value = (cwd or Path.cwd()).joinpath(DEFAULT_STORAGE_DIR).resolve().as_uri()
    elif "://" not in value:  # a plain local path
        value = (cwd or Path.cwd()).joinpath(value).resolve().as_uri()
    try:
        parsed = parse_storage_uri(value, allow_tiny=False)
    except URIError as exc:
        raise RunError(f"--storage {value}: {exc}") from None
    return str(parsed).rstrip("/") + "/"


def rehome(resources: Sequence[Resource], root: str | None) -> list[Resource]:
    """Copies of the resources whose output.uri is <root>/datasets/<name>/ or <root>/experiments/<name>/.

    The stage hashes do not cover the output, so artifacts written under the new root stay valid.
    """
    if root is None:
        return list(resources)
    layout = StorageLayout(root)
    out = []
    for res in resources:
        output = res.spec.output.model_copy(update={"uri": layout.resource_root(res.kind, res.metadata.name)})
        spec = res.spec.model_copy(update={"output": output})
        out.append(res.model_copy(update={"spec": spec}))
    return out


def select(resources: list[Resource], only: Sequence[str]) -> list[Resource]:
    if not only:
        return resources
    names = {r.metadata.name for r in resources}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise RunError(
            f"--only {', '.join(unknown)}: no such resource in the file (it has: {', '.join(sorted(names))})"
        )
    return [r for r in resources if r.metadata.name in set(only)]


def uses_tiny_models(resources: Sequence[Resource]) -> bool:
    """Whether any model or data reference is a built-in tiny one with random weights (``tiny://sd``...)."""
    return any(references_random_tiny(res.spec) for res in resources)


def uses_toy_world(resources: Sequence[Resource]) -> bool:
    """Whether any model or data reference is the trained toy world (``tiny://world/...``)."""
    return any(references_toy_world(res.spec) for res in resources)


def storage_of(output: Any) -> Storage:
    return open_storage(output.uri, endpoint=output.endpoint, region=output.region)


def check_writable(storage: Storage) -> None:
    """Write and delete a small probe object, so an unwritable or full storage fails before any work."""
    key = f".synthrec-write-check-{os.getpid()}"
    try:
        storage.write_bytes(key, b"synthrec\n")
        storage.delete(key)
    except StorageError as exc:
        raise RunError(f"cannot write to the storage {storage.uri}: {exc}") from None
