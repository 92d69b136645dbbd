"""Resolve a model reference to a local folder.

- ``org/name``, ``hf://org/name@revision``: ``huggingface_hub.snapshot_download`` (token from HF_TOKEN or
  HUGGING_FACE_HUB_TOKEN; cache: ``cache_dir/hf`` when ``cache_dir`` is given, else the hub's own cache,
  HF_HOME / HF_HUB_CACHE). ``revision`` is the commit hash.
- ``s3://bucket/folder/``: every object under the folder is downloaded once into the model cache
  (``cache_dir``, default ``$SYNTHREC_CACHE/models`` or ``~/.cache/synthrec/models``). A download goes
  to a temporary folder, sizes are checked against the listing, sha256 digests are recorded in a manifest
  written last, and only then is the folder renamed into place, so a cache entry is complete or absent.
  Later calls list the remote folder (one request per 1000 objects) and reuse the entry when the listing
  (keys, sizes, ETags) matches the manifest and the local files are intact; nothing is downloaded then.
  ``revision`` is the sha256 of the file list (key, size, sha256), the same on every machine.
- ``file:///abs/folder``: used in place; it must be an existing folder.
- a bare name (``RN50``) with ``allow_name``: an open_clip built-in; nothing to fetch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec import contract
from synthrec.storage import (
    ObjectInfo,
    Storage,
    StorageError,
    clean_key,
    exclusive_lock,
    open_storage,
    sha256_file,
)
from synthrec.storage.errors import NO_SPACE, Failure
from synthrec.storage.uris import TOY_WORLD_PREFIX, ModelRef, URIError, parse_model_ref
from synthrec.tiny.layout import BUILDER_VERSION

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # in the cache entry, next to the model folder
MODEL_DIR = "model"


class ModelRefError(ValueError):
    """A model reference that cannot be resolved; the message says which, what failed and what to do.

    ``failure`` (as synthrec.storage.errors has it): ``config`` when the reference itself is wrong (no such
    repository, revision or folder, no access); ``retryable`` when fetching it failed for a reason another
    try may not meet (the network, the hub or S3 overloaded, a full disk)."""

    def __init__(self, message: str, *, failure: Failure = "config") -> None:
        super().__init__(message)
        self.failure: Failure = failure


def _hub_offline() -> bool:
    """Whether huggingface_hub runs in offline mode (HF_HUB_OFFLINE, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_failure(e: BaseException) -> Failure:
    """Whether a failed download may work on another try: a full disk, the network, 5xx/429 answers."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return "retryable"
    if isinstance(e, StorageError):
        return "retryable" if e.failure == "data" else e.failure  # a file gone mid-download: try again
    try:
        import requests
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # pragma: no cover - both come with the workers extra
        return "config"
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        return "retryable" if status >= 500 or status == 429 else "config"
    if isinstance(e, requests.ConnectionError | requests.Timeout | TimeoutError | ConnectionError):
        return "retryable"
    return "config"


@dataclass(frozen=True)
class ResolvedModel:
    ref: ModelRef
    path: Path | None  # local folder; None for built-in names
    revision: str | None  # HF commit hash, or sha256 of an s3 folder's file list
    name: str | None  # built-in name (allow_name)


def default_cache_dir() -> Path:
    """``$SYNTHREC_CACHE/models`` if SYNTHREC_CACHE is set, else ``~/.cache/synthrec/models``."""
    return contract.cache_root() / "models"


def resolve_model(
    ref: str,
    *,
    cache_dir: Path | None = None,
    allow_name: bool = False,
    storage_opts: dict[str, Any] | None = None,
) -> ResolvedModel:
    """Make the model ``ref`` available locally; ``storage_opts`` go to ``open_storage`` for s3://."""
    try:
        parsed = parse_model_ref(ref, allow_name=allow_name)
    except URIError as e:
        raise ModelRefError(str(e)) from e
    if parsed.kind == "name":
        return ResolvedModel(parsed, None, None, parsed.location)
    if parsed.kind == "file":
        return ResolvedModel(parsed, _local_folder(ref, Path(parsed.location)), None, None)
    if parsed.kind == "tiny":  # built offline by the worker runtime on first use
        from synthrec.workers.runtime import tiny_models, toy_world

        if parsed.location.startswith(TOY_WORLD_PREFIX):  # trained: the toy world
            from synthrec.toyworld.builder import BUILDER_VERSION as WORLD_VERSION

            world = toy_world()
            path = getattr(world, parsed.location.removeprefix(TOY_WORLD_PREFIX))
            return ResolvedModel(parsed, path, f"toy-world-v{WORLD_VERSION}-seed{world.seed}", None)
        path = getattr(tiny_models(), parsed.location)  # random weights
        return ResolvedModel(parsed, path, f"tiny-v{BUILDER_VERSION}", None)
    if parsed.kind == "hf":
        path, revision = _snapshot(ref, parsed, Path(cache_dir) / "hf" if cache_dir else None)
        return ResolvedModel(parsed, path, revision, None)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path, revision = _s3_folder(ref, parsed, root, storage_opts or {})
    return ResolvedModel(parsed, path, revision, None)


def _local_folder(ref: str, path: Path) -> Path:
    if not path.exists():
        raise ModelRefError(
            f"model {ref!r}: the folder {path} does not exist; check the path (in a pod: is the volume "
            "mounted?), or use hf://org/name or s3://bucket/folder/"
        )
    if not path.is_dir():
        raise ModelRefError(
            f"model {ref!r}: {path} is a file; give the folder that holds the model (config and weights)"
        )
    return path


# ------------------------------------------------------------------------------------- Hugging Face


def _snapshot(ref: str, parsed: ModelRef, cache_dir: Path | None) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
    what = f"model {ref!r} (Hugging Face {parsed.location}" + (
        f"@{parsed.revision})" if parsed.revision else ")"
    )
    alternatives = "or pass a file:///folder or s3://bucket/folder/ reference to a copy of the model"
    try:
        path = Path(
            snapshot_download(parsed.location, revision=parsed.revision, token=token, cache_dir=cache_dir)
        )
    except GatedRepoError as e:
        raise ModelRefError(
            f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN, {alternatives}"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelRefError(
            f"{what}: no such repository, or it is private and no valid token is set; check the id, set "
            f"HF_TOKEN, {alternatives}"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelRefError(
            f"{what}: revision {parsed.revision!r} does not exist; use a branch, tag or commit hash of it"
        ) from e
    except LocalEntryNotFoundError as e:
        raise ModelRefError(
            f"{what}: not in the local cache and the hub cannot be reached (offline mode via "
            f"HF_HUB_OFFLINE, or no network): {_first_line(e)}. Check the network and HF_ENDPOINT, "
            f"pre-download it into HF_HOME, {alternatives}",
            # Offline mode is the user's setting: no retry can fetch the model. A network outage may pass.
            failure="config" if _hub_offline() else "retryable",
        ) from e
    except Exception as e:  # HTTP errors, timeouts, disk errors: one message, the class says who retries
        raise ModelRefError(
            f"{what}: download failed: {type(e).__name__}: {_first_line(e)}. Check the network, the token "
            f"(HF_TOKEN) and free disk space, {alternatives}",
            failure=fetch_failure(e),
        ) from e
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else parsed.revision
    return path, commit


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------- s3 folders


def _s3_folder(ref: str, parsed: ModelRef, cache_root: Path, opts: dict[str, Any]) -> tuple[Path, str]:
    try:
        storage = open_storage(parsed.location, **opts)
        remote = list(storage.list())
    except StorageError as e:
        raise ModelRefError(f"model {ref!r}: cannot list the folder: {e}", failure=fetch_failure(e)) from e
    if not remote:
        raise ModelRefError(
            f"model {ref!r}: {storage.uri} holds no objects; upload the model folder there "
            "(e.g. synthrec.storage.upload_tree) or fix the reference"
        )
    for info in remote:
        try:
            clean_key(info.key)
        except StorageError as e:
            raise ModelRefError(f"model {ref!r}: {e}; such a key cannot be stored in a local folder") from e
    endpoint = getattr(storage, "endpoint", None) or ""
    identity = hashlib.sha256(f"{endpoint}\n{storage.uri}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "-", storage.uri.removeprefix("s3://").strip("/"))[-80:]
    entries = cache_root / "s3"
    entry = entries / f"{slug}-{identity}"
    try:
        entries.mkdir(parents=True, exist_ok=True)
        # One process per entry at a time, so concurrent resolvers on a node download once.
        with exclusive_lock(entries / f".{entry.name}.lock"):
            manifest = _valid_manifest(entry, remote)
            if manifest is None:
                manifest = _download(ref, storage, remote, entries, entry, endpoint)
    except OSError as e:
        raise ModelRefError(
            f"model {ref!r}: cannot use the model cache {cache_root}: {e}; free space, fix its permissions "
            "or point SYNTHREC_CACHE elsewhere",
            failure=fetch_failure(e),
        ) from e
    return entry / MODEL_DIR, manifest["revision"]


def _listing(remote: list[ObjectInfo]) -> list[list[Any]]:
    return [[o.key, o.size, o.etag] for o in remote]


def _valid_manifest(entry: Path, remote: list[ObjectInfo]) -> dict[str, Any] | None:
    """The entry's manifest if it matches the remote listing and the files are intact, else None."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("model cache %s: unreadable manifest (%s); downloading again", entry, e)
        return None
    if [[f["key"], f["size"], f["etag"]] for f in manifest.get("files", [])] != _listing(remote):
        log.info("model cache %s: the remote folder changed; downloading again", entry)
        return None
    for f in manifest["files"]:
        problem = _damage(entry / MODEL_DIR / f["key"], f)
        if problem:
            log.warning("model cache %s: %s is %s; downloading again", entry, f["key"], problem)
            return None
    return manifest


def _damage(path: Path, record: dict[str, Any]) -> str | None:
    """Why ``path`` does not match its manifest record, or None. Hashes only when size/mtime differ."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size != record["size"]:
        return f"{st.st_size} bytes instead of {record['size']}"
    if st.st_mtime_ns != record["mtime_ns"] and sha256_file(path) != record["sha256"]:
        return "modified (sha256 differs)"
    return None


def _download(
    ref: str, storage: Storage, remote: list[ObjectInfo], entries: Path, entry: Path, endpoint: str
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(dir=entries, prefix=f".{entry.name}.download-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by several users
    try:
        files = []
        for info in remote:
            local = tmp / MODEL_DIR / info.key
            try:
                storage.download_file(info.key, local)
            except StorageError as e:
                raise ModelRefError(f"model {ref!r}: download failed: {e}", failure=fetch_failure(e)) from e
            st = local.stat()
            if st.st_size != info.size:
                raise ModelRefError(
                    f"model {ref!r}: {storage.url(info.key)} has {st.st_size} bytes, the listing said "
                    f"{info.size}; the folder changed while downloading, try again",
                    failure="retryable",
                )
            files.append(
                {
                    "key": info.key,
                    "size": info.size,
                    "etag": info.etag,
                    "sha256": sha256_file(local),
                    "mtime_ns": st.st_mtime_ns,
                }
            )
        manifest = {
            "source": storage.uri,
            "endpoint": endpoint or None,
            "revision": _revision(files),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _install(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model %s: downloaded %d files into %s", ref, len(files), entry)
    return manifest


def _revision(files: list[dict[str, Any]]) -> str:
    listing = [[f["key"], f["size"], f["sha256"]] for f in files]
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def _install(tmp: Path, entry: Path) -> None:
    """Rename the finished download into place, moving a stale entry away first."""
    old = None
    if entry.exists():
        old = entry.with_name(f".{entry.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(entry, old)
    os.rename(tmp, entry)
    if old is not None:
        with suppress(OSError):
            shutil.rmtree(old)
