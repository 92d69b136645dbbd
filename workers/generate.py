"""The generate stage: one shard of images as one WebDataset tar, then its commit marker.

For shard ``s`` of ``S``: check the shard's marker (same generate hash -> done, at once and without
importing torch; another hash -> StorageConflict), check that prompts.jsonl was committed by this spec's
prompts stage, take the shard's contiguous slice of the work items (workers/workitems.py), load the
pipeline, and run batches across prompts, each image with its own seeded generator. Images come back as
tensors on the device, are made uint8 there and copied to the host without waiting (diffusion.HostImages);
JPEG encoding and tar writing happen on a background thread (workers/shardio.py), and the tar is uploaded
in parts while it grows (synthrec.storage.streaming.FileTail), so at the end only its last part and the
commit are left: the upload is published only if no other writer of the shard (a retried pod, a slow
original) got there first, and the marker written last (synthrec.storage.commit_staged).

The batch size is ``generator.batchSize``, or with ``generator.batchSizeSearch`` the fastest size measured
on the shard's first batches (workers/batching.py) or stored by an earlier pod. With ``generator.compile``
the compiled artifacts are loaded from the output before the first batch and stored after the shard when
new (compile_cache.CompileCache: the artifacts, and on a CPU the built kernels per CPU model), so later
pods skip most of the compilation.

Images are generated at ``generator.generationResolution``, by default the pipeline's native size (its
denoiser's sample size x the VAE scale factor), and stored at ``generator.resolution``, resized with
antialiasing by the writer thread.

Real Guidance (few-shot, paper §3.2): the same items run through the image-to-image twin of the pipeline
(shared weights), each starting from its class's real shot (center-cropped to a square, resized to the
generation size); images_per_class / shots images per real shot. The strength is the explicit
``realGuidance.strength`` or the one whose start level on the loaded scheduler is closest to
``realGuidance.target_alpha_bar()`` (synthrec.noise_levels); it, the start timestep and the level reached
go into every sample's JSON and the shard marker (``real_guidance``), and from there into the card.

Tar members per sample: ``<key>.jpg``, ``<key>.json`` and ``<key>.cls`` (the class index, so the webdataset
library's ``to_tuple("jpg", "cls")`` works on the shards as they are); keys are built from indexes only
(``c00003-p00012-i00004``: class, prompt row, image), so names with quotes, slashes, '..' or any unicode
never reach a file name. The JSON holds class, class_name, prompt, seed, item and the generation settings.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from synthrec.contract.layout import DatasetLayout
from synthrec.contract.summaries import GenerateSummary
from synthrec.noise_levels import StartLevel, steps_run
from synthrec.storage import ObjectNotFound, commit_staged, existing_commit, read_marker
from synthrec.workers.runtime import ConfigError, DataError, StageContext
from synthrec.workers.workitems import PromptRow, WorkItem, parse_rows, per_class_counts, shard_items

log = logging.getLogger("synthrec.workers.generate")


def run(ctx: StageContext) -> GenerateSummary:
    started = time.perf_counter()
    task = ctx.task
    layout = DatasetLayout(task.output.uri)
    stage_hash = task.hashes["generate"]
    shard = ctx.shard
    if not 0 <= shard < task.shards:
        raise ConfigError(f"shard {shard} is outside 0..{task.shards - 1} of this generate stage")
    tar = ctx.storage.url(layout.shard(shard))
    done = existing_commit(ctx.storage, layout.shard_marker(shard), stage_hash, what=tar)
    if done is not None:  # checked before anything heavy is imported
        log.info("shard %d already committed for this spec; nothing to do", shard)
        return GenerateSummary(
            images=done["count"],
            tar=tar,
            sha256=done.get("sha256"),
            skipped=True,
            seconds_total=round(time.perf_counter() - started, 3),
        )

    spec = task.dataset
    rows = load_prompts(ctx, layout)
    rg = spec.real_guidance
    items = list(
        shard_items(
            rows,
            shard=shard,
            shards=task.shards,
            stage_hash=stage_hash,
            shots=rg.shots if rg else None,
            interleaved=spec.sharding.order == "interleaved",
        )
    )
    if rg is not None and rg.strength is not None:
        try:  # before any model is loaded: an explicit strength that runs no step is a spec error
            steps_run(rg.strength, spec.generator.steps)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    ctx.progress.start(len(items))
    generator = ShardGenerator(ctx, layout, items, started=started)
    return generator.run()


def load_prompts(ctx: StageContext, layout: DatasetLayout) -> list[PromptRow]:
    """prompts.jsonl of THIS spec: DataError when it is missing, from another spec, or damaged."""
    expected = ctx.task.hashes["prompts"]
    marker = read_marker(ctx.storage, layout.prompts_marker)
    if marker is None:
        raise DataError(
            f"{ctx.storage.url(layout.prompts_marker)} does not exist: the prompts stage has not completed "
            "for this output; run it first"
        )
    if marker["spec_hash"] != expected:
        raise DataError(
            f"prompts from another spec: {ctx.storage.url(layout.prompts)} has prompts hash "
            f"{marker['spec_hash']}, this spec needs {expected}; use a new output URI or delete the old "
            "prompts to redo them"
        )
    try:
        data = ctx.storage.read_bytes(layout.prompts)
    except ObjectNotFound:
        raise DataError(
            f"{ctx.storage.url(layout.prompts)} is missing although its marker exists; delete "
            f"{ctx.storage.url(layout.prompts_marker)} and re-run the prompts stage"
        ) from None
    digest = marker.get("sha256")
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise DataError(
            f"{ctx.storage.url(layout.prompts)} does not match the sha256 in its marker (changed after "
            "it was committed); delete both and re-run the prompts stage"
        )
    try:
        return parse_rows(data, ctx.storage.url(layout.prompts))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"damaged prompts file: {exc}") from None


class ShardGenerator:
    """Runs one shard: pipelines, batches, the background writer, the upload and the commit."""

    def __init__(self, ctx: StageContext, layout: DatasetLayout, items: list[WorkItem], *, started: float):
        self.ctx = ctx
        self.layout = layout
        self.items = items
        self.started = started
        self.spec = ctx.task.dataset
        self.gen = self.spec.generator
        self.rg = self.spec.real_guidance
        self.stage_hash = ctx.task.hashes["generate"]
        self.storage_opts = {"endpoint": ctx.task.output.endpoint, "region": ctx.task.output.region}
        self.pipes: Any = None
        self.size: int | None = None  # generation size, known once the pipeline is loaded
        self.start: StartLevel | None = None  # Real Guidance's img2img start
        self.shots: RealShots | None = None
        self.timer: Any = None  # diffusion.ModelTimer once the pipeline is loaded
        self.compile_cache: Any = None  # compile_cache.CompileCache with generator.compile
        self.batch_size = self.gen.batch_size
        self.batch_size_source: str | None = None
        self.first_batch_done: float | None = None  # perf_counter when the first batch's images were ready
        self.first_batch_images = 0
        self.real_sources: dict[int, str] = {}  # item index -> real shot URI, set before the batch is queued

    def run(self) -> GenerateSummary:
        if self.rg is not None and self.items:  # data errors before the (slow) model load
            self.shots = RealShots.sample(self.ctx, self.spec)
        load_started = time.perf_counter()
        if self.items:
            from synthrec.workers.diffusion import generation_size, load_pipelines
            from synthrec.workers.mirror import source_of

            source, pinned = source_of(self.ctx.storage, self.gen.model)
            self.pipes = load_pipelines(
                self.gen,
                real_guidance=self.rg is not None,
                storage_opts=self.storage_opts,
                source=source,
                pinned=pinned,
            )
            self.size = self.gen.generation_resolution or generation_size(self.pipes.text2image)
            if self.shots is not None:
                self.shots.size = self.size
                self.start = self._real_guidance_start()
            self._load_compile_cache()
        seconds_load = time.perf_counter() - load_started
        with tempfile.TemporaryDirectory(prefix="synthrec-gen-") as tmp:
            tar_path = Path(tmp) / "shard.tar"
            gen_started = time.perf_counter()
            writer_stats, tail = self._write(tar_path)
            seconds_generate = time.perf_counter() - gen_started
            upload_started = time.perf_counter()
            marker = self._commit(tail)
            seconds_upload = time.perf_counter() - upload_started
        compile_state = None
        if self.compile_cache is not None:
            stored = self.compile_cache.save()
            reused = self.compile_cache.loaded or self.compile_cache.kernels_loaded
            compile_state = "stored" if stored else ("loaded" if reused else "unchanged")
        total = time.perf_counter() - self.started
        n = len(self.items)
        seconds_model = self.timer.total() if self.timer else 0.0
        steady = None
        if self.first_batch_done is not None and n > self.first_batch_images:
            steady_s = gen_started + seconds_generate - self.first_batch_done
            steady = (n - self.first_batch_images) / steady_s if steady_s > 0 else None
        return GenerateSummary(
            images=n,
            tar=self.ctx.storage.url(self.layout.shard(self.ctx.shard)),
            sha256=marker["sha256"],
            size=marker["size"],
            device=self.pipes.device if self.pipes else None,
            dtype=self.pipes.dtype if self.pipes else None,
            batch_size=self.batch_size,
            batch_size_source=self.batch_size_source,
            compile_cache=compile_state,
            seconds_load=round(seconds_load, 3),
            seconds_fetch=round(self.pipes.seconds_fetch, 3) if self.pipes else None,
            seconds_startup=(
                round(self.first_batch_done - self.started, 3) if self.first_batch_done is not None else None
            ),
            seconds_model=round(seconds_model, 3),
            seconds_generate=round(seconds_generate, 3),
            seconds_upload=round(seconds_upload, 3),
            seconds_total=round(total, 3),
            seconds_writer_wait=round(writer_stats["waiting"], 3),
            model_busy=round(seconds_model / seconds_generate, 4) if n and seconds_generate else None,
            images_per_s=round(n / seconds_generate, 3) if n and seconds_generate else None,
            steady_images_per_s=round(steady, 3) if steady else None,
            real_skipped=self.shots.skipped if self.shots else 0,
        )

    def _facts(self) -> dict[str, Any]:
        """What the compiled artifacts and the best batch size depend on."""
        return {
            "model": self.gen.model,
            "revision": self.pipes.revision,
            "pipeline": self.pipes.pipeline_class,
            "scheduler": self.pipes.scheduler_class,
            "device": self.pipes.device,
            "dtype": self.pipes.dtype,
            "size": self.size,
            "cfg": self.gen.guidance_scale > 1,
            "compile": self.pipes.compiled,
            "img2img": self.rg is not None,
        }

    def _load_compile_cache(self) -> None:
        if not self.pipes.compiled:
            return
        from synthrec.workers.compile_cache import CompileCache

        self.compile_cache = CompileCache(self.ctx.storage, CompileCache.key_of(**self._facts()))
        self.compile_cache.load()

    def _commit(self, tail: Any) -> dict[str, Any]:
        """Seal the upload and commit it (synthrec.storage.commit_staged: published only if no other writer
        of the shard got there first; else that writer's commit stands and this upload is aborted)."""
        shard_key, marker_key = self.layout.shard(self.ctx.shard), self.layout.shard_marker(self.ctx.shard)
        try:
            existing = existing_commit(
                self.ctx.storage, marker_key, self.stage_hash, what=self.ctx.storage.url(shard_key)
            )
        except BaseException:
            tail.abort()
            raise
        if existing is not None:  # committed meanwhile: the last part need not go up
            tail.abort()
            return existing
        try:
            staged = tail.finish()
        except BaseException:
            tail.abort()
            raise
        return commit_staged(  # discards the upload unless it is what the commit that stands describes
            self.ctx.storage,
            staged,
            shard_key,
            marker_key,
            spec_hash=self.stage_hash,
            count=len(self.items),
            shard=self.ctx.shard,
            first_item=self.items[0].index if self.items else None,
            last_item=self.items[-1].index if self.items else None,
            classes=per_class_counts(self.items),
            model=self.gen.model,
            revision=self.pipes.revision if self.pipes else None,
            real_skipped=self.shots.skipped if self.shots else 0,
            generation_resolution=self.size,
            resolution=self.gen.resolution,
            real_guidance=self._real_guidance_record(),
            batch_size=self.batch_size,
        )

    def _real_guidance_start(self) -> StartLevel:
        from synthrec.noise_levels import resolve_start
        from synthrec.workers.diffusion import img2img_start

        assert self.rg is not None
        scheduler = self.pipes.image2image.scheduler
        start = resolve_start(
            self.rg.target_alpha_bar(),
            self.rg.strength,
            self.gen.steps,
            img2img_start(scheduler, self.gen.steps),
        )
        log.info(
            "Real Guidance: strength %.4f on %s (%d of %d steps from t=%g, alpha-bar %.3f; target %s)",
            start.strength,
            type(scheduler).__name__,
            start.steps_run,
            self.gen.steps,
            start.timestep,
            start.alpha_bar,
            "explicit strength" if self.rg.strength is not None else f"{self.rg.target_alpha_bar():.3f}",
        )
        return start

    def _real_guidance_record(self) -> dict[str, Any] | None:
        """What the card shows about Real Guidance's start (None without Real Guidance or items)."""
        if self.rg is None or self.start is None:
            return None
        return {
            "strength": self.start.strength,
            "strength_source": "explicit" if self.rg.strength is not None else "matched",
            "target_alpha_bar": self.rg.target_alpha_bar(),
            "alpha_bar": self.start.alpha_bar,
            "start_timestep": self.start.timestep,
            "steps_run": self.start.steps_run,
            "steps": self.gen.steps,
            "scheduler": self.pipes.scheduler_class,
            "shots": self.rg.shots,
        }

    def _write(self, tar_path: Path) -> tuple[dict[str, float], Any]:
        from synthrec.storage.streaming import FileTail
        from synthrec.workers.shardio import BackgroundShardWriter

        writer = BackgroundShardWriter(
            tar_path,
            key=lambda item: item.key,
            metadata=self._metadata,
            label=lambda item: item.class_index,
            quality=self.gen.jpeg_quality,
            size=self.gen.resolution,
            on_written=self.ctx.progress.advance,
        )
        tail = None
        try:
            tail = FileTail(self.ctx.storage, self.layout.shard(self.ctx.shard), tar_path)
            writer.on_flushed = tail.poke
            if self.items:
                self._generate_all(writer)
            writer.close()
        except BaseException:
            writer.abort()
            if tail is not None:
                tail.abort()
            raise
        return {"waiting": writer.seconds_waiting, "busy": writer.seconds_busy}, tail

    def _generate_all(self, writer: Any) -> None:
        """Every item, in batches of the chosen size (searched on the first batches when asked)."""
        import torch

        from synthrec.workers.batching import BatchSearch, choice_key, load_choice, save_choice
        from synthrec.workers.diffusion import ModelTimer

        self.timer = ModelTimer(self.pipes.device)
        search = None
        self.batch_size_source = "spec"
        if self.gen.batch_size_search:
            key = choice_key(**self._facts(), maximum=self.gen.batch_size, torch=torch.__version__)
            stored = load_choice(self.ctx.storage, key)
            if stored is not None:
                self.batch_size, self.batch_size_source = int(stored["batch_size"]), "stored"
            else:
                search = BatchSearch(self.gen.batch_size)
        position = 0
        while position < len(self.items):
            searching = search is not None and not search.done
            size = search.size if search is not None else self.batch_size
            batch = self.items[position : position + size]
            self.timer.start()
            try:
                images = self._generate(batch)
            except torch.OutOfMemoryError:
                if not searching or search is None or not search.rates:
                    raise
                torch.cuda.empty_cache()
                search.out_of_memory(size)
                continue
            seconds = self.timer.stop(wait=searching or self.first_batch_done is None)
            if self.first_batch_done is None:
                self.first_batch_done, self.first_batch_images = time.perf_counter(), len(batch)
            position += len(batch)
            writer.put(batch, images)
            if search is not None and searching:
                search.record(size, len(batch), seconds or 0.0)
                if search.done:
                    self.batch_size, self.batch_size_source = search.best, "searched"
                    log.info("batch size %d measured (images/s by size: %s)", search.best, search.rates)
                    save_choice(self.ctx.storage, key, search, device=self.pipes.device, shard=self.ctx.shard)

    def _generate(self, batch: list[WorkItem]) -> Any:
        from synthrec.workers.diffusion import HostImages, generators

        gen = self.gen
        common: dict[str, Any] = {
            "prompt": [i.prompt for i in batch],
            "num_inference_steps": gen.steps,
            "guidance_scale": gen.guidance_scale,
            "generator": generators([i.seed for i in batch]),
            "output_type": "pt",  # stays on the device: made uint8 there (HostImages)
        }
        if gen.negative_prompt:
            common["negative_prompt"] = [gen.negative_prompt] * len(batch)
        if self.shots is None:
            out = self.pipes.text2image(height=self.size, width=self.size, **common)
        else:
            assert self.start is not None
            images = []
            for item in batch:
                image, uri = self.shots.image(item)
                images.append(image)
                self.real_sources[item.index] = uri
            out = self.pipes.image2image(image=images, strength=self.start.strength, **common)
        return HostImages(out.images)

    def _metadata(self, item: WorkItem) -> dict[str, Any]:
        gen = self.gen
        return {
            "class": item.class_index,
            "class_name": item.class_name,
            "prompt": item.prompt,
            "prompt_index": item.prompt_index,
            "prompt_source": item.prompt_source,
            "image": item.image,
            "item": item.index,
            "seed": item.seed,
            "real_source": self.real_sources.get(item.index),
            "strength": self.start.strength if self.start else None,
            "start_alpha_bar": self.start.alpha_bar if self.start else None,
            "model": gen.model,
            "revision": self.pipes.revision,
            "pipeline": self.pipes.pipeline_class,
            "scheduler": self.pipes.scheduler_class,
            "steps": gen.steps,
            "guidance": gen.guidance_scale,
            "negative_prompt": gen.negative_prompt,
            "resolution": gen.resolution,
            "generation_resolution": self.size,
            "shard": self.ctx.shard,
        }


class RealShots:
    """The real shots of each class, chosen exactly as ``realdata.load_shots`` chooses them (the classes'
    ``shot_order``, an unreadable image under on_bad_image 'skip' replaced by the next one), but loaded
    lazily: a shard reads only the shots of its own classes, each once, center-cropped and resized to
    ``size`` (the generation size, set once the pipeline is loaded).

    Under 'fail' the first unreadable image is a DataError; a class with fewer than ``shots`` readable
    images is a DataError. ``skipped`` counts the unreadable images passed over.
    """

    def __init__(self, ctx: StageContext, order: dict[int, list[Any]], shots: int, on_bad: str, size: int):
        self.ctx = ctx
        self.order = order
        self.shots = shots
        self.on_bad = on_bad
        self.size = size
        self._picked: dict[int, list[tuple[str, Any]]] = {}
        self._position: dict[int, int] = {}
        self.skipped = 0

    @classmethod
    def sample(cls, ctx: StageContext, spec: Any) -> RealShots:
        from synthrec.workers.prompts import labels_of
        from synthrec.workers.realdata import index_real_data, sample_shots, shot_order

        rg = spec.real_guidance
        index = index_real_data(rg.source, labels_of(spec), ctx.open)
        sample_shots(index, rg.shots, rg.seed)  # DataError up front when a class has too few images
        order = shot_order(index, rg.seed)
        return cls(ctx, order, rg.shots, rg.source.on_bad_image, spec.generator.resolution)

    def image(self, item: WorkItem) -> tuple[Any, str]:
        """The prepared real image an item starts from, and its URI."""
        from synthrec.workers.diffusion import center_square
        from synthrec.workers.realdata import load_rgb

        assert item.shot is not None
        c = item.class_index
        picked = self._picked.setdefault(c, [])
        candidates = self.order[c]
        while len(picked) <= item.shot:
            position = self._position.get(c, 0)
            if position >= len(candidates):
                raise DataError(
                    f"class {c}: only {len(picked)} of its {len(candidates)} real images are readable, "
                    f"{self.shots} shots are needed; replace the damaged images"
                )
            self._position[c] = position + 1
            real = candidates[position]
            rgb = load_rgb(real, self.ctx.open, on_bad=self.on_bad)
            if rgb is None:
                self.skipped += 1
                continue
            picked.append((str(real.uri), center_square(rgb, self.size)))
        uri, image = picked[item.shot]
        return image, uri
