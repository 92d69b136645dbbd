"""The cleanup stage: delete exactly what a resource wrote (``spec.output.onDelete: Delete``).

The operator runs it as a Job in the resource's own namespace, with that namespace's credentials Secret
and the resource's endpoint (as Argo's artifact garbage collection does): the operator itself never holds
storage credentials. What the resource wrote is what its workers recorded in their ledgers
(``.synthrec/written/``, synthrec.contract.written) under its uid; every other object under the output
URI survives. It refuses, deleting nothing, when:

- the output URI is a bucket root (or ``file:///``): never a place one resource owns;
- a ledger under the prefix belongs to another resource (another uid: a resource nested below, one that
  shares the prefix, or an earlier resource of the same name whose artifacts were retained), or cannot
  be read: deleting our keys could delete its data;
- the prefix lies inside another resource's output (a ledger of another uid at an enclosing folder's
  root): a key this resource recorded may be one that resource wrote (a write that was refused or lost
  still stays in the write-ahead ledger). An enclosing folder the namespace's credentials may not list
  is skipped: credentials scoped to a team's prefix cannot see, and could not have written, above it.
"""

from __future__ import annotations

import logging

from synthrec.contract.layout import WRITTEN_KEYS
from synthrec.contract.summaries import CleanupSummary
from synthrec.contract.written import WrittenKeys, enclosing_folders, is_ledger, parse_written, root_refusal
from synthrec.storage import ObjectNotFound, Storage, StoragePermissionError
from synthrec.workers.runtime import ConfigError, StageContext

log = logging.getLogger("synthrec.workers.cleanup")
SHOWN = 3  # foreign ledgers named in a refusal


def run(ctx: StageContext) -> CleanupSummary:
    task = ctx.task
    uid = task.resource.uid
    if not uid:
        raise ConfigError("a cleanup task needs the resource's uid: it deletes what that resource recorded")
    reason = root_refusal(task.output.uri)
    if reason:
        raise ConfigError(f"refusing to delete anything: {reason}")
    storage = ctx.storage
    listing = {info.key for info in storage.list()}
    ledgers = sorted(k for k in listing if is_ledger(k))
    ours: list[str] = []
    written: set[str] = set()
    others: list[str] = []
    for key in ledgers:
        doc = _read(storage, key)
        if doc is None:
            continue  # deleted meanwhile (a cleanup that ran before): nothing of it to protect
        if doc.resource.uid == uid and key.startswith(WRITTEN_KEYS):  # at our root, keys relative to it
            ours.append(key)
            written.update(doc.keys)
        else:
            others.append(_whose(doc, key))
    others += _enclosing_ledgers(ctx, uid)
    if others:
        shown = "; ".join(others[:SHOWN]) + (
            f"; and {len(others) - SHOWN} more" if len(others) > SHOWN else ""
        )
        raise ConfigError(
            f"refusing to delete anything under {storage.uri}: it holds, or lies inside, "
            f"artifacts of another resource: "
            f"{shown}. Delete this resource's objects by hand if they are no longer needed"
        )
    doomed = sorted((written & listing) - set(ledgers))
    ctx.progress.start(len(doomed) + len(ours))
    for key in doomed:
        storage.delete(key)
        ctx.progress.advance()
    for key in ours:  # last: a cleanup interrupted before this point is simply run again
        storage.delete(key)
        ctx.progress.advance()
    kept = len(listing) - len(doomed) - len(ours)
    log.info(
        "deleted %d objects under %s (%d ledgers); %d other objects kept",
        len(doomed),
        storage.uri,
        len(ours),
        kept,
    )
    return CleanupSummary(deleted=len(doomed), kept=kept, ledgers=len(ours))


def _whose(doc: WrittenKeys, where: str) -> str:
    r = doc.resource
    return f"{r.kind} {r.namespace + '/' if r.namespace else ''}{r.name} (uid {r.uid}, {where})"


def _enclosing_ledgers(ctx: StageContext, uid: str) -> list[str]:
    """Other resources' ledgers at the root of a folder enclosing the output (see the module docstring)."""
    found: list[str] = []
    for folder in enclosing_folders(ctx.task.output.uri):
        outer = ctx.open(folder)
        try:
            keys = [info.key for info in outer.list(WRITTEN_KEYS)]
        except StoragePermissionError as exc:
            log.info("not checking %s for other resources' ledgers: %s", folder, exc)
            continue
        for key in keys:
            doc = _read(outer, key)
            if doc is not None and doc.resource.uid != uid:
                found.append(_whose(doc, outer.url(key)))
    return found


def _read(storage: Storage, key: str) -> WrittenKeys | None:
    try:
        raw = storage.read_bytes(key)
    except ObjectNotFound:
        return None
    try:
        return parse_written(raw, storage.url(key))
    except ValueError as exc:
        raise ConfigError(
            f"refusing to delete anything: {exc}; it cannot be told whose keys it lists. Check it, delete it "
            "if it is not synthrec's, and delete the resource again"
        ) from None
