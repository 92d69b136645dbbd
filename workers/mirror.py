"""Models fetched once per dataset, not once per pod (``spec.modelMirror``).

The prompts stage, which runs once before any shard, resolves every model the dataset's pods load (the
generator, the filter's CLIP) to a pinned revision and copies it once to where the pods load it from:

- ``output`` (the default for an ``s3://`` output): ``models/<name>/`` under the dataset's output, so each
  pod fetches from the object store (no hub, no rate limit; a node's pods share the /cache copy) and never
  from the model hub;
- ``cache``: ``$SYNTHREC_CACHE/mirror/<name>/``, for pods whose /cache is one shared volume (the operator's
  ``workers.cache.volume``: a ReadWriteMany claim): they load it in place, nothing is fetched at all;
- ``off`` (the default for a ``file://`` output: one machine's caches already hold one copy): nothing.

``file://`` references (a ReadOnlyMany volume, an image volume) are never copied, only pinned: their
content digest is recorded, and a pod that finds other content fails rather than mixing models.

``models/mirror.json`` records, per reference, the pinned revision and where its copy is; it is written
last and carries the mirror's hash (the references and the target), so a re-run skips what is done. A pod
looks its reference up there (``mirrored``): found, it loads the copy and reports the pinned revision;
absent (a reference added since, or the mirror off), it loads the reference itself, pinned when the mirror
knew it. The revision a pod reports is the same, mirrored or not, so caches keyed by it agree.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec import contract
from synthrec.contract.layout import DatasetLayout
from synthrec.plan.stages import digest
from synthrec.storage import ObjectNotFound, Storage, StorageError, read_marker, upload_tree, write_marker
from synthrec.storage.uris import parse_model_ref
from synthrec.workers.runtime import ConfigError, StageContext

log = logging.getLogger(__name__)

MIRROR_VERSION = "1"
_OPEN_CLIP_FOLDER = "open_clip"


@dataclass(frozen=True)
class ModelUse:
    """One model a dataset's pods load: the spec field, the reference, and (open_clip) its pretrained tag."""

    field: str
    ref: str
    pretrained: str | None = None
    allow_name: bool = False


def dataset_models(spec: Any) -> list[ModelUse]:
    """The models the generate, filter and reduce pods load (the prompts model is loaded by one pod)."""
    uses = [ModelUse("generator.model", spec.generator.model)]
    if spec.filter.enabled:
        clip = spec.filter.clip
        uses.append(ModelUse("filter.clip.model", clip.model, clip.pretrained, allow_name=True))
    return uses


def mirror_target(spec: Any) -> str:
    """``spec.modelMirror.target``, with ``auto`` resolved by the output's scheme."""
    target = spec.model_mirror.target if spec.model_mirror is not None else "auto"
    if target == "auto":
        return "output" if spec.output.uri.startswith("s3://") else "off"
    return target


def mirror_hash(spec: Any) -> str:
    target = mirror_target(spec)
    uses = [[u.field, u.ref, u.pretrained] for u in dataset_models(spec)]
    return digest({"v": MIRROR_VERSION, "target": target, "models": uses})


# ------------------------------------------------------------------------------------- the mirror step


def mirror_models(ctx: StageContext) -> dict[str, Any] | None:
    """Pin and copy the dataset's models (the prompts stage calls this first); returns the mirror record,
    or None when the mirror is off. Done already for these references and target: nothing is fetched."""
    spec = ctx.task.dataset
    target = mirror_target(spec)
    if target == "off":
        return None
    expected = mirror_hash(spec)
    try:
        existing = read_marker(ctx.storage, DatasetLayout.models_mirror)
    except StorageError:
        existing = None
    if (
        existing is not None
        and existing["spec_hash"] == expected
        and not any(e.get("error") for e in existing["models"])
    ):
        log.info("models already mirrored for this dataset (%s)", target)
        return existing
    started = time.perf_counter()
    entries = [_mirror_or_note(ctx, use, target) for use in dataset_models(spec)]
    record = write_marker(
        ctx.storage,
        DatasetLayout.models_mirror,
        spec_hash=expected,
        target=target,
        models=entries,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info("mirrored %d model(s) to %s in %.1f s", len(entries), target, record["seconds"])
    return record


def _mirror_or_note(ctx: StageContext, use: ModelUse, target: str) -> dict[str, Any]:
    """A model that cannot be fetched here is not the prompts stage's failure: the stage that loads it
    says so (as without the mirror), and the next prompts run tries again."""
    try:
        return _mirror_one(ctx, use, target)
    except ConfigError as exc:
        log.warning("not mirrored, the pods will load it themselves: %s", exc)
        return {"field": use.field, "ref": use.ref, "copied": False, "uri": None, "error": str(exc)}


def _mirror_one(ctx: StageContext, use: ModelUse, target: str) -> dict[str, Any]:
    from synthrec.workers.modelref import ModelRefError, resolve_model

    output = ctx.task.output
    opts = {k: v for k, v in {"endpoint": output.endpoint, "region": output.region}.items() if v}
    parsed = parse_model_ref(use.ref, allow_name=use.allow_name)
    started = time.perf_counter()
    if parsed.kind == "name":
        return _mirror_open_clip(ctx, use, target, started)
    try:
        resolved = resolve_model(use.ref, allow_name=use.allow_name, storage_opts=opts)
    except ModelRefError as exc:
        raise ConfigError(f"{use.field}: {exc}") from None
    assert resolved.path is not None
    entry: dict[str, Any] = {"field": use.field, "ref": use.ref, "kind": parsed.kind}
    if parsed.kind == "file":  # a volume the admin mounted: pinned by content, never copied
        from synthrec.workers.clip import folder_digest

        entry.update(revision=resolved.revision or folder_digest(resolved.path), uri=use.ref, copied=False)
    else:
        revision = resolved.revision or "unknown"
        name = _folder_name(parsed.kind, parsed.location, revision)
        uri, files, size = _copy_folder(ctx, resolved.path, name, target)
        entry.update(revision=revision, uri=uri, copied=True, files=files, bytes=size)
    if parsed.kind == "hf":
        entry["pinned_ref"] = f"hf://{parsed.location}@{entry['revision']}"
    entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


def _mirror_open_clip(ctx: StageContext, use: ModelUse, target: str, started: float) -> dict[str, Any]:
    """A built-in open_clip architecture: its pretrained tag's weights file, downloaded once."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    entry: dict[str, Any] = {"field": use.field, "ref": use.ref, "kind": "name", "pretrained": use.pretrained}
    entry["revision"] = f"open_clip:{use.ref}:{use.pretrained or 'random'}"
    cfg = get_pretrained_cfg(use.ref, use.pretrained) if use.pretrained else {}
    if not cfg:  # random weights, or a tag open_clip does not know (the pod's load says so)
        entry.update(copied=False, uri=None)
        return entry
    with tempfile.TemporaryDirectory(prefix="synthrec-mirror-") as tmp:
        try:
            weights = Path(download_pretrained(cfg, cache_dir=tmp))
        except Exception as exc:  # network, hub or disk trouble, said once for the whole dataset
            raise ConfigError(
                f"{use.field} {use.ref!r} (pretrained {use.pretrained!r}): cannot download its weights "
                f"({type(exc).__name__}: {exc}); check the network and HF_TOKEN, or give a model folder"
            ) from None
        folder = Path(tmp) / "folder"
        folder.mkdir()
        shutil.copyfile(weights, folder / weights.name)
        preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
        (folder / "open_clip_pretrained.json").write_text(
            json.dumps({"name": use.ref, "pretrained": use.pretrained, "file": weights.name, **preprocess})
        )
        name = _folder_name("open_clip", f"{use.ref}-{use.pretrained}", open_clip.__version__)
        uri, files, size = _copy_folder(ctx, folder, name, target)
    entry.update(uri=uri, copied=True, files=files, bytes=size, weights=weights.name, preprocess=preprocess)
    entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


def _folder_name(kind: str, location: str, revision: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "--", location.removeprefix("s3://").strip("/"))[-80:].strip("-.")
    rev = re.sub(r"[^A-Za-z0-9]+", "", revision)[:12] or "x"
    return f"{kind}-{slug}-{rev}"


def _copy_folder(ctx: StageContext, folder: Path, name: str, target: str) -> tuple[str, int, int]:
    """Copy a local model folder to the target; returns (its URI, files, bytes)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    if target == "output":
        prefix = DatasetLayout.model_folder(name)
        upload_tree(ctx.storage, folder, prefix)
        return ctx.storage.uri + prefix, len(files), size
    place = cache_mirror_root() / name
    if not place.is_dir():
        place.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=place.parent, prefix=f".{name}."))
        try:
            shutil.copytree(folder, tmp / "m", symlinks=False)
            os.rename(tmp / "m", place)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return place.as_uri() + "/", len(files), size


def cache_mirror_root() -> Path:
    """``$SYNTHREC_CACHE/mirror``: shared by pods whose /cache is one volume."""
    return contract.cache_root() / "mirror"


# --------------------------------------------------------------------------------------- the pods' side


def mirrored(storage: Storage, ref: str) -> dict[str, Any] | None:
    """The mirror's entry for ``ref`` in this dataset's output, or None (read at each model load: one
    small object, and never a stale answer for another dataset in the same process)."""
    try:
        record = storage.read_json(DatasetLayout.models_mirror)
    except ObjectNotFound:
        record = None
    except StorageError as exc:
        log.warning("cannot read the model mirror record (%s); loading models from their references", exc)
        record = None
    for entry in (record or {}).get("models", []):
        if entry.get("ref") == ref:
            return entry
    return None


def source_of(storage: Storage, ref: str) -> tuple[str, str | None]:
    """(what to load, the pinned revision or None) for a model folder reference of this dataset."""
    entry = mirrored(storage, ref)
    if entry is None or entry.get("kind") == "file":  # a mounted folder: loaded in place, as before
        return ref, None
    uri = entry.get("uri")
    if uri and uri.startswith("file://") and not Path(uri.removeprefix("file://")).is_dir():
        fallback = entry.get("pinned_ref") or ref
        log.warning("the mirrored copy %s is not here (is /cache shared?); loading %s", uri, fallback)
        return fallback, entry.get("revision")
    return uri or entry.get("pinned_ref") or ref, entry.get("revision")


def load_dataset_clip(ctx: StageContext, device: str) -> Any:
    """The filter's CLIP model, from the mirror when it holds it (filter and reduce stages)."""
    from synthrec.workers.clip import load_clip

    clip_spec = ctx.task.dataset.filter.clip
    opts = {"endpoint": ctx.task.output.endpoint, "region": ctx.task.output.region}
    entry = mirrored(ctx.storage, clip_spec.model)
    if entry is None or not entry.get("uri"):
        return load_clip(clip_spec.model, clip_spec.pretrained, device, storage_opts=opts)
    source, revision = source_of(ctx.storage, clip_spec.model)
    if entry["kind"] == "name":
        return load_clip(
            clip_spec.model,
            clip_spec.pretrained,
            device,
            storage_opts=opts,
            weights_from=source,
            revision=revision,
        )
    clip = load_clip(source, None, device, storage_opts=opts, revision=revision)
    clip.ref = clip_spec.model  # the card names the model as the spec does
    return clip
