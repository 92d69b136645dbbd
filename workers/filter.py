"""The filter stage, one shard per pod: CLIP image features and zero-shot scores of a generated shard.

1. Skip at once (before torch is imported) when ``features/gen-NNNNN.done.json`` carries this spec's
   filter hash; StorageConflict when it carries another.
2. Check the shard's generate marker (DataError if missing or from another spec), download the tar and
   verify its sha256.
3. Load the scorer (``filter.clip``: open_clip name + pretrained tag, or a model folder), build two text
   heads (synthrec.workers.clip): the CLIP Filter's prompts (``filter.prompts``, by default the official
   one prompt per class from the generation names, synthrec.api.labels.filter_prompts) and the zero-shot
   head (head templates with head names, for soft targets); encode every image once, batched
   (``filter.batchSize``), decoding JPEGs in DataLoader workers.
4. Write the features file (format in synthrec.workers.shards), then its marker (spec_hash = the filter
   hash, sha256, size, counts, model, timings).

Undecodable images are skipped and counted (policy in synthrec.workers.shards). The CLIP Filter decision
itself is made once for the whole dataset by the reduce stage.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from synthrec.api.labels import filter_prompts, resolve_labels
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.summaries import FilterSummary
from synthrec.storage import commit_file, existing_commit
from synthrec.workers.runtime import DataError, StageContext, select_device


def run(ctx: StageContext) -> FilterSummary:
    task = ctx.task
    shard = ctx.shard
    storage = ctx.storage
    filter_hash = task.hashes["filter"]
    features_key, marker_key = DatasetLayout.features(shard), DatasetLayout.features_marker(shard)

    done = existing_commit(storage, marker_key, filter_hash, what=storage.url(features_key))
    if done is not None:
        return _summary(done, storage.url(features_key), skipped=True)
    if not task.dataset.filter.enabled:
        return FilterSummary(skipped=True, reason="filter disabled")

    started = time.monotonic()
    gen_marker = _generate_marker(ctx)
    labels = resolve_labels(task.dataset.labels)
    with tempfile.TemporaryDirectory(prefix="synthrec-filter-") as tmp:
        folder = Path(tmp)
        from synthrec.workers.shards import download_shard, scan_shard

        tar = download_shard(storage, shard, folder, gen_marker)
        contents = scan_shard(tar, len(labels))
        t_io = time.monotonic() - started
        tensors, meta, counts, timing = _score(ctx, tar, contents, labels)
        meta["generate_sha256"] = gen_marker.get("sha256")
        local = folder / "features.safetensors"
        from synthrec.workers.shards import write_features

        write_features(local, tensors, meta)
        marker = commit_file(
            storage,
            local,
            features_key,
            marker_key,
            spec_hash=filter_hash,
            shard=shard,
            images=counts["images"],
            corrupt=counts["corrupt"],
            device=counts["device"],
            decode=counts["decode"],
            clip=meta["clip"],
            generator=meta["generator"],
            generate_sha256=gen_marker.get("sha256"),
            seconds={"total": round(time.monotonic() - started, 3), "download": round(t_io, 3), **timing},
        )
    return _summary(marker, storage.url(features_key), skipped=False)


def _generate_marker(ctx: StageContext) -> dict[str, Any]:
    from synthrec.workers.shards import generate_marker

    return generate_marker(ctx.storage, ctx.shard, ctx.task.hashes["generate"])


def _summary(marker: dict[str, Any], uri: str, *, skipped: bool) -> FilterSummary:
    return FilterSummary(images=marker["images"], corrupt=marker["corrupt"], features=uri, skipped=skipped)


def _score(ctx: StageContext, tar: Path, contents: Any, labels: Any) -> tuple[dict, dict, dict, dict]:
    import torch

    from synthrec.workers.clip import encode_dataset, set_torch_threads
    from synthrec.workers.decode import resolve_decode
    from synthrec.workers.mirror import load_dataset_clip
    from synthrec.workers.shards import FEATURES_FORMAT, read_range

    set_torch_threads()
    spec = ctx.task.dataset.filter
    device = select_device()
    t0 = time.monotonic()
    clip = load_dataset_clip(ctx, device)  # from the model mirror when it holds it
    head = clip.text_head(labels.head_names, labels.templates)
    prompts = filter_prompts(labels, spec.prompts)
    scorer = head if spec.prompts == "head-templates" else clip.text_head(prompts.names, prompts.templates)
    t_model = time.monotonic() - t0

    samples = contents.samples
    decode = resolve_decode(spec.decode, device)
    dataset = clip.dataset([(str(tar), s.offset, s.size) for s in samples], read_range, decode)
    ctx.progress.start(len(samples))
    t1 = time.monotonic()
    feats, ok = encode_dataset(clip, dataset, spec.batch_size, ctx.progress)
    t_encode = time.monotonic() - t1

    corrupt = list(contents.corrupt)
    corrupt += [
        {"key": s.key, "class": s.class_index, "reason": "undecodable image"}
        for s, good in zip(samples, ok.tolist(), strict=True)
        if not good
    ]
    keep = [i for i, good in enumerate(ok.tolist()) if good]
    if not keep and samples:
        raise DataError(f"shard {ctx.shard}: none of its {len(samples)} images decode; regenerate the shard")
    feats = feats[keep] if keep else torch.zeros((0, head.shape[1]))
    first = samples[0].meta if samples else {}
    # Logits only, in float16; scores and soft targets are their softmax, taken where they are used.
    tensors = {
        "features": feats.half().numpy(),
        "logits": (clip.logit_scale * feats @ head.cpu().T).half().numpy(),
        "class_index": torch.tensor([samples[i].class_index for i in keep], dtype=torch.int64).numpy(),
    }
    if scorer is not head:
        tensors["filter_logits"] = (clip.logit_scale * feats @ scorer.cpu().T).half().numpy()
    meta = {
        "format": FEATURES_FORMAT,
        "keys": [samples[i].key for i in keep],
        "corrupt": corrupt,
        "shard": str(ctx.shard),
        "spec_hash": ctx.task.hashes["filter"],
        "clip": clip.describe(),
        "logit_scale": repr(clip.logit_scale),
        "classes": str(len(labels)),
        "templates": list(labels.templates),
        "filter_prompts": prompts.describe(),
        "generator": {"model": first.get("model"), "revision": first.get("revision")},
    }
    counts: dict[str, Any] = {"images": len(keep), "corrupt": len(corrupt)}
    counts["device"] = device
    counts["decode"] = decode
    timing = {"model": round(t_model, 3), "encode": round(t_encode, 3)}
    return tensors, meta, counts, timing
