"""Reading what the generate stage wrote, and the per-shard features files of the filter stage.

A generated shard ``shards/gen-NNNNN.tar`` is a WebDataset tar: ``<key>.jpg`` + ``<key>.json`` (at least
``class`` (int index), ``class_name``, ``prompt``, ``seed``, ``item``, ``real_source``, ``model``,
``revision``) + ``<key>.cls`` (the class index as text; older shards lack it, so readers here use the json's
``class``). Its marker ``shards/gen-NNNNN.done.json`` carries the generate stage hash and the tar's
sha256, which is checked after download: a damaged tar is a DataError (delete the marker to regenerate).

Policy for damaged samples inside a verified tar (the generator wrote bad bytes): a JPEG that does not
decode, or a sample without its .jpg or .json, is skipped and counted as ``corrupt`` (per shard in the
features file and marker, per class in manifest.json); it never reaches the kept index.

Features file ``features/gen-NNNNN.safetensors`` (format 2; one row per decodable image, in tar order):

=============  =========================  ===========================================================
tensor         shape / dtype              meaning
=============  =========================  ===========================================================
features       [N, D] float16             L2-normalised CLIP image features
logits         [N, C] float16             zero-shot head logits, logit_scale * cos(image, class text):
                                          head templates with head names (soft targets)
filter_logits  [N, C] float16             the same with the CLIP Filter's prompts (``filter.prompts``);
                                          absent when those are the head's (then ``logits`` scores)
class_index    [N] int64                  intended class (from the sample's json)
=============  =========================  ===========================================================

Logits only, in float16 (the precision the official code computed them in: CLIP in fp16): the CLIP
Filter's score ``p(c | image)`` is ``softmax(filter_logits)[c]`` and a soft target ``softmax(logits / T)``,
both derived where they are needed (``ShardFeatures.scores``, ``soft_targets``). Format 1 files (float32
logits plus their softmax ``probs``) are still read.

Metadata (strings): ``format`` ("2"), ``keys`` (JSON list, row order), ``corrupt`` (JSON list of {key,
class, reason}), ``shard``, ``spec_hash``, ``clip`` (JSON: model, pretrained, revision), ``logit_scale``,
``classes`` (count), ``templates`` (JSON list), ``filter_prompts`` (JSON: mode, names, templates,
example), ``generator`` (JSON: model, revision of the first sample).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.contract.layout import DatasetLayout
from synthrec.storage import Storage, read_marker, sha256_file
from synthrec.workers.runtime import DataError


@dataclass(frozen=True)
class ShardSample:
    key: str
    class_index: int
    offset: int  # of the jpg bytes in the tar
    size: int
    meta: dict[str, Any] = field(hash=False, compare=False)


@dataclass
class ShardContents:
    samples: list[ShardSample]  # complete samples, tar order
    corrupt: list[dict[str, Any]]  # incomplete samples: {key, class, reason}


def generate_marker(storage: Storage, shard: int, generate_hash: str) -> dict[str, Any]:
    """The shard's generate marker; DataError when missing or written by another spec."""
    marker = read_marker(storage, DatasetLayout.shard_marker(shard))
    if marker is None:
        raise DataError(
            f"shard {shard}: {storage.url(DatasetLayout.shard(shard))} has no commit marker; its generation "
            "failed or has not finished, so there is nothing to filter"
        )
    if marker["spec_hash"] != generate_hash:
        raise DataError(
            f"shard {shard}: {storage.url(DatasetLayout.shard_marker(shard))} was written by another spec "
            f"(generate hash {marker['spec_hash']}, this spec {generate_hash}); use a new output URI or "
            "delete the old shards"
        )
    return marker


def download_shard(storage: Storage, shard: int, folder: Path, marker: dict[str, Any]) -> Path:
    """Download the shard tar and check it against the marker's sha256 (when it has one)."""
    path = folder / Path(DatasetLayout.shard(shard)).name
    storage.download_file(DatasetLayout.shard(shard), path)
    expected = marker.get("sha256")
    if expected and sha256_file(path) != expected:
        raise DataError(
            f"shard {shard}: {storage.url(DatasetLayout.shard(shard))} does not match the sha256 in its "
            "marker (damaged or overwritten); delete the shard and its marker to generate it again"
        )
    return path


def scan_shard(path: Path, classes: int) -> ShardContents:
    """Group the tar's members by WebDataset key; check each sample's json and class index."""
    from synthrec.limits import MAX_JSON_MEMBER_BYTES, read_member
    from synthrec.workers.realdata import tar_members

    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    metas: dict[str, Any] = {}
    try:
        with tarfile.open(path) as tar:
            for key, ext, member in tar_members(tar):
                members.setdefault(key, {})[ext] = member
                if ext == "json":
                    try:
                        metas[key] = json.loads(read_member(tar, member, MAX_JSON_MEMBER_BYTES))
                    except ValueError:  # not JSON, or MemberTooLarge: the sample counts as corrupt
                        metas[key] = None
    except (tarfile.TarError, OSError) as e:
        raise DataError(
            f"{path.name} is not a readable tar ({e}); delete it and its marker to regenerate"
        ) from e
    samples, corrupt = [], []
    for key, fields in members.items():
        meta = metas.get(key)
        cls = meta.get("class") if isinstance(meta, dict) else None
        if not isinstance(cls, int) or isinstance(cls, bool):
            corrupt.append({"key": key, "class": None, "reason": "missing or unreadable json"})
            continue
        if not 0 <= cls < classes:
            raise DataError(
                f"{path.name}: sample {key} has class {cls}, outside the label space's 0..{classes - 1}; "
                "the shard was generated for another label space"
            )
        image = fields.get("jpg") or fields.get("jpeg") or fields.get("png") or fields.get("webp")
        if image is None or image.size == 0:
            corrupt.append({"key": key, "class": cls, "reason": "no image"})
            continue
        samples.append(ShardSample(key, cls, image.offset_data, image.size, meta))
    return ShardContents(samples, corrupt)


def read_range(item: tuple[str, int, int]) -> bytes:
    """Bytes ``(path, offset, size)`` of a local file (a tar member); picklable for DataLoader workers."""
    path, offset, size = item
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


# --------------------------------------------------------------------------------- features files

FEATURES_FORMAT = "2"


@dataclass
class ShardFeatures:
    features: Any  # numpy [N, D] float16
    logits: Any  # numpy [N, C] (float16; float32 in format 1)
    filter_logits: Any  # numpy [N, C]: the CLIP Filter's logits (``logits`` when it scores with the head)
    class_index: Any  # numpy [N] int64
    keys: list[str]
    corrupt: list[dict[str, Any]]
    meta: dict[str, str]
    probs: Any = None  # format 1 only: softmax(filter_logits) as stored

    def scores(self) -> Any:
        """float32 [N]: each row's CLIP Filter score p(intended class | image)."""
        import numpy as np

        rows = np.arange(len(self.class_index))
        if self.probs is not None:
            return np.asarray(self.probs[rows, self.class_index], dtype=np.float32)
        return class_probability(self.filter_logits, self.class_index)


def class_probability(logits: Any, classes: Any, chunk: int = 8192) -> Any:
    """float32 [N]: ``softmax(logits[i])[classes[i]]`` per row, computed in float32 a chunk at a time."""
    import numpy as np

    out = np.empty(len(classes), dtype=np.float32)
    for start in range(0, len(classes), chunk):
        z = np.asarray(logits[start : start + chunk], dtype=np.float32)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        picked = e[np.arange(len(z)), np.asarray(classes[start : start + chunk])]
        out[start : start + chunk] = picked / e.sum(axis=1)
    return out


def write_features(path: Path, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write numpy arrays + metadata (non-strings JSON-encoded) as safetensors."""
    from safetensors.numpy import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    save_file({k: v for k, v in tensors.items()}, str(path), metadata=meta)


def read_features(path: Path, tensors: tuple[str, ...] | None = None) -> ShardFeatures:
    """A features file; ``tensors`` limits what is read (the rest is left as None), e.g. reduce reads no
    ``features`` unless Real Filtering needs them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        names = set(f.keys())
        wanted = names if tensors is None else names & (set(tensors) | {"class_index"})
        if tensors is not None and "filter_logits" in tensors:  # scores: what format 1 or 2 has
            scorer = {"filter_logits"} if "filter_logits" in names else {"logits"}
            wanted |= (scorer | {"probs"}) & names
        arrays = {name: f.get_tensor(name) for name in wanted}
    logits = arrays.get("logits")
    return ShardFeatures(
        features=arrays.get("features"),
        logits=logits,
        filter_logits=arrays.get("filter_logits", logits),
        class_index=arrays["class_index"],
        keys=json.loads(meta.get("keys", "[]")),
        corrupt=json.loads(meta.get("corrupt", "[]")),
        meta=meta,
        probs=arrays.get("probs"),
    )


def soft_targets(logits: Any, temperature: float) -> Any:
    """The dataset's soft targets ``softmax(logits / T)`` from a features file's ``logits`` rows (numpy)."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
