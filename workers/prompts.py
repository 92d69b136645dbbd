"""The prompts stage: class names -> generation prompts, written once as prompts.jsonl.

Strategies (paper §3.1; method spec §1.3–1.4 and §2.3):

- basic (B): each class name in the generation templates (``prompts.templates``, else the label space's
  ``promptTemplate`` or its preset's templates, e.g. EuroSAT's "a centered satellite photo of {}",
  ImageNet-Sketch's "a sketch of a {}.", one per rendition type for ImageNet-R).
- language-enhancement (LE): a seq2seq word-to-sentence model (the paper: T5-base fine-tuned on
  CommonGen) turns "a <class>" into sentences. As in the official code: sampling with the decoding
  settings (default top-k 50, 20 new tokens), ``sentencesPerClass + oversample`` draws per class, exact
  duplicates dropped, ``sentencesPerClass`` of the unique ones picked at random, each wrapped in the
  wrapper. Unlike the official code, too few unique sentences is not a crash: the class is filled
  deterministically (its basic prompts, then repeats) and the number of fills is recorded.
- Real Guidance (``realGuidance`` set): class-name prompts, as the paper's RG code uses (no LE).

Everything is deterministic given ``prompts.seed``: torch is seeded per class from the seed and the class
index, and the pick among unique sentences uses its own seeded RNG.

Output: ``prompts.jsonl`` (one PromptRow per line) and the commit marker ``prompts.done.json`` carrying the
prompts stage hash, counts per class and fills per class. A marker with the same hash means done.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrec.api import SyntheticDatasetSpec
from synthrec.api.labels import ResolvedLabels, resolve_labels
from synthrec.contract.layout import DatasetLayout
from synthrec.contract.summaries import PromptsSummary
from synthrec.storage import commit_file, existing_commit
from synthrec.workers.models import first_line, quiet_hub_progress, resolve_model_folder
from synthrec.workers.runtime import ConfigError, StageContext, select_device
from synthrec.workers.workitems import PromptRow, PromptSource, derive_seed, dump_rows, even_split

log = logging.getLogger("synthrec.workers.prompts")


@dataclass
class PromptSet:
    rows: list[PromptRow]
    strategy: str  # basic | language-enhancement | real-guidance
    fills: dict[int, int] = field(default_factory=dict)  # class index -> prompts filled in (LE only)
    model: str | None = None
    revision: str | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[str(r.class_index)] = out.get(str(r.class_index), 0) + 1
        return out

    @property
    def images(self) -> int:
        return sum(r.images for r in self.rows)


def run(ctx: StageContext) -> PromptsSummary:
    from synthrec.workers.mirror import mirror_models

    task = ctx.task
    layout = DatasetLayout(task.output.uri)
    spec_hash = task.hashes["prompts"]
    # The models first: once prompts.jsonl is committed, generate pods start and load from the mirror.
    mirror = mirror_models(ctx)
    mirrored = {
        "models_mirrored": sum(1 for m in mirror["models"] if m.get("copied")) if mirror else 0,
        "seconds_mirror": mirror.get("seconds") if mirror else None,
    }
    existing = existing_commit(
        ctx.storage, layout.prompts_marker, spec_hash, what=ctx.storage.url(layout.prompts)
    )
    if existing is not None:
        log.info("prompts already committed for this spec (%s); nothing to do", spec_hash[:12])
        return _summary(existing, ctx.storage.url(layout.prompts), skipped=True).model_copy(update=mirrored)

    spec: SyntheticDatasetSpec = task.dataset
    labels = labels_of(spec)
    storage_opts = {"endpoint": task.output.endpoint, "region": task.output.region}
    prompt_set = build_prompts(spec, labels, progress=ctx.progress, storage_opts=storage_opts)
    fills = {str(k): v for k, v in sorted(prompt_set.fills.items()) if v}
    with tempfile.TemporaryDirectory(prefix="synthrec-prompts-") as tmp:
        path = Path(tmp) / "prompts.jsonl"
        path.write_bytes(dump_rows(prompt_set.rows))
        marker = commit_file(
            ctx.storage,
            path,
            layout.prompts,
            layout.prompts_marker,
            spec_hash=spec_hash,
            rows=len(prompt_set.rows),
            classes=len(labels),
            images=prompt_set.images,
            strategy=prompt_set.strategy,
            counts=prompt_set.counts(),
            fills=fills,
            filled=sum(prompt_set.fills.values()),
            model=prompt_set.model,
            revision=prompt_set.revision,
        )
    return _summary(marker, ctx.storage.url(layout.prompts), skipped=False).model_copy(update=mirrored)


def _summary(marker: dict[str, Any], uri: str, *, skipped: bool) -> PromptsSummary:
    return PromptsSummary(
        prompts=marker["rows"],
        classes=marker["classes"],
        images=marker["images"],
        strategy=marker.get("strategy"),
        filled=marker.get("filled", 0),
        filled_classes=len(marker.get("fills") or {}),
        uri=uri,
        skipped=skipped,
    )


def labels_of(spec: SyntheticDatasetSpec) -> ResolvedLabels:
    try:
        return resolve_labels(spec.labels)
    except ValueError as exc:
        raise ConfigError(f"spec.labels: {exc}") from None


def fill_in(template: str, text: str) -> str:
    """Put ``text`` into a '{}' template. Not str.format: class names and templates may hold braces."""
    return template.replace("{}", text)


def basic_prompts(spec: SyntheticDatasetSpec, labels: ResolvedLabels, name: str) -> list[str]:
    """The basic-strategy prompts of one class, one per generation template."""
    templates = spec.prompts.templates or labels.prompt_templates
    return [fill_in(t, name) for t in templates]


def images_per_row(spec: SyntheticDatasetSpec, rows: int) -> list[int]:
    """Images wanted from each of a class's ``rows`` prompts."""
    if spec.real_guidance is not None:
        return even_split(spec.real_guidance.images_per_class, rows)
    if spec.generator.images_per_class is not None:
        return even_split(spec.generator.images_per_class, rows)
    return [spec.generator.images_per_prompt] * rows


def build_prompts(
    spec: SyntheticDatasetSpec,
    labels: ResolvedLabels,
    *,
    progress: Any = None,
    storage_opts: dict[str, Any] | None = None,
) -> PromptSet:
    """Every class's prompts, in class-index order."""
    if progress is not None:
        progress.start(len(labels))
    per_class: list[list[tuple[str, PromptSource]]] = []
    result = PromptSet(rows=[], strategy=spec.prompts.strategy)
    if spec.real_guidance is not None:
        result.strategy = "real-guidance"
        if spec.prompts.strategy == "language-enhancement":
            log.warning(
                "realGuidance is set: using class-name prompts as the paper's Real Guidance does; "
                "prompts.strategy language-enhancement is not used"
            )
    if result.strategy == "language-enhancement":
        enhancer = LanguageEnhancer.load(
            spec.prompts.model,
            decoding=spec.prompts.decoding,
            batch_size=spec.prompts.batch_size,
            storage_opts=storage_opts,
        )
        result.model, result.revision = spec.prompts.model, enhancer.revision
        wrapper = spec.prompts.wrapper or labels.prompt_wrapper
        input_template = spec.prompts.input_template or labels.le_input
        n = spec.prompts.sentences_per_class
        for c in labels.classes:
            raw = enhancer.sentences(
                fill_in(input_template, c.name),
                n + spec.prompts.oversample,
                seed=derive_seed("synthrec-le", spec.prompts.seed, c.index),
            )
            wrapped = [fill_in(wrapper, s) if wrapper else s for s in raw]
            chosen, fills = select_prompts(
                wrapped,
                n,
                seed=derive_seed("synthrec-le-pick", spec.prompts.seed, c.index),
                fallback=basic_prompts(spec, labels, c.name),
            )
            if fills:
                log.warning(
                    "class %d (%r): only %d unique sentences for %d prompts; filled %d deterministically",
                    c.index,
                    c.name,
                    n - fills,
                    n,
                    fills,
                )
            result.fills[c.index] = fills
            per_class.append(chosen)
            if progress is not None:
                progress.advance()
    else:
        for c in labels.classes:
            per_class.append([(p, "basic") for p in basic_prompts(spec, labels, c.name)])
            if progress is not None:
                progress.advance()
    for c, prompts in zip(labels.classes, per_class, strict=True):
        for i, ((prompt, source), images) in enumerate(
            zip(prompts, images_per_row(spec, len(prompts)), strict=True)
        ):
            result.rows.append(PromptRow(c.index, c.name, i, prompt, images, source))
    return result


def select_prompts(
    candidates: Sequence[str], n: int, *, seed: int, fallback: Sequence[str]
) -> tuple[list[tuple[str, PromptSource]], int]:
    """Drop exact duplicates and empty strings, pick ``n`` at random (seeded), as the official code does.

    When fewer than ``n`` are unique, all unique ones are kept (in a seeded random order) and the rest is
    filled: first the ``fallback`` prompts not already present, then repeats of the kept ones (or of the
    fallback when the model produced nothing usable). Returns the prompts with their source and the number
    filled.
    """
    unique = list(dict.fromkeys(s.strip() for s in candidates if s and s.strip()))
    rng = random.Random(seed)
    if len(unique) >= n:
        return [(s, "le") for s in rng.sample(unique, n)], 0
    chosen: list[tuple[str, PromptSource]] = [(s, "le") for s in rng.sample(unique, len(unique))]
    present = set(unique)
    for p in fallback:
        if len(chosen) == n:
            break
        if p not in present:
            chosen.append((p, "fill"))
            present.add(p)
    pool = [s for s, _ in chosen] or list(fallback)
    i = 0
    while len(chosen) < n:
        chosen.append((pool[i % len(pool)], "fill"))
        i += 1
    return chosen, n - len(unique)


@dataclass
class LanguageEnhancer:
    """A transformers seq2seq model that writes sentences from "a <class>" (T5 on CommonGen in the paper)."""

    tokenizer: Any
    model: Any
    device: str
    decoding: Any  # synthrec.api.Decoding
    batch_size: int
    revision: str | None

    @classmethod
    def load(
        cls,
        ref: str,
        *,
        decoding: Any = None,
        batch_size: int = 64,
        storage_opts: dict[str, Any] | None = None,
    ) -> LanguageEnhancer:
        from synthrec.api import Decoding

        path, revision = resolve_model_folder(ref, "prompts.model", storage_opts)
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        device = select_device()
        try:
            with quiet_hub_progress():
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                model = AutoModelForSeq2SeqLM.from_pretrained(str(path)).to(device).eval()
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ConfigError(
                f"prompts.model {ref!r}: cannot load a seq2seq model and tokenizer from {path}: "
                f"{type(exc).__name__}: {first_line(exc)}. The folder must hold a transformers "
                "seq2seq model (config.json, weights, tokenizer files), e.g. a copy of "
                "mrm8488/t5-base-finetuned-common_gen"
            ) from exc
        return cls(tokenizer, model, device, decoding or Decoding(), batch_size, revision)

    def sentences(self, text: str, count: int, *, seed: int) -> list[str]:
        """``count`` decoded sentences for ``text`` (fewer calls than sentences, same RNG stream)."""
        import torch

        d = self.decoding
        devices = [self.device] if self.device.startswith("cuda") else []
        out: list[str] = []
        with torch.random.fork_rng(devices=devices), torch.no_grad():  # leave the caller's RNG alone
            torch.manual_seed(seed)
            encoded = self.tokenizer([text], return_tensors="pt").to(self.device)
            remaining = count if d.do_sample else min(count, d.num_beams)  # beam search repeats itself
            while remaining > 0:
                k = min(self.batch_size, remaining) if d.do_sample else remaining
                ids = self.model.generate(
                    **encoded,
                    do_sample=d.do_sample,
                    top_k=d.top_k,
                    top_p=d.top_p,
                    temperature=d.temperature,
                    num_beams=d.num_beams,
                    max_new_tokens=d.max_new_tokens,
                    repetition_penalty=d.repetition_penalty,
                    num_return_sequences=k,
                )
                out.extend(s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True))
                remaining -= k
        return out
