"""The train stage: one run of a RecognitionExperiment (``task.run``), the paper's Classifier Tuning.

1. Skip at once (before torch is imported) when ``runs/<run>/done.json`` carries this run's spec hash;
   StorageConflict when it carries another.
2. Pin the synthetic datasets: each ``manifest.json`` must still have the sha256 the experiment pinned
   (DataError otherwise: the dataset changed under the experiment), and ``index/kept.jsonl`` the sha256
   the manifest records.
3. Load the backbone (open_clip, frozen) and its zero-shot head: templates ``classifierTuning.
   headInitTemplates`` or the label space's, filled with the classes' head names (synthrec.workers.clip).
4. Features, cached ONCE per (backbone revision, data identity, split) under the experiment's
   ``features/<cache key>/`` (``features.safetensors`` then ``done.json``), shared by every run:
   ``synthetic-<h>`` per dataset digest (the kept images, from the shard tars; or straight from the
   dataset's own features files when the filter's CLIP is the backbone), ``real-train-<h>`` per set of
   sampled shot URIs, ``test-<h>`` / ``validation-<h>`` per list of image URIs. The key is a sha256 of all
   of that, so backbones, datasets, shots and seeds never collide (the official cache key
   ``<dataset class>/<split>`` does; method spec §4.3-2). Real data is identified by its URIs (replacing
   files under the same names needs a new experiment output).
5. Evaluate the zero-shot head on the test split (the baseline), tune (synthrec.workers.tuning), evaluate
   the final (or best-validation) head on the test split. 0 shots and no synthetic data: nothing to
   train, the run reports the zero-shot head.
6. Log the run to TensorBoard (``runs/<run>/tensorboard/``), and to MLflow / W&B where the environment
   configures them (synthrec.workers.tracking; a failure there only warns).
7. Write ``runs/<run>/metrics.json``, ``head.safetensors``, ``curve.json`` (+ ``curve.png``),
   ``confusion.json`` (sparse, kept out of metrics.json: C x C cells are megabytes for ImageNet), then the
   marker ``done.json`` (spec_hash = task.spec_hash). Summary: run, top1, zero_shot_top1, metrics (URI).

Bad real images follow each RealData's ``onBadImage`` (synthrec.workers.realdata): a skipped test image is
left out of the test set and counted in metrics.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthrec.api import SHOT_METHODS
from synthrec.api.labels import ResolvedLabels, resolve_labels
from synthrec.contract import confusion
from synthrec.contract.base import DocumentError
from synthrec.contract.layout import ExperimentLayout
from synthrec.contract.metrics import RunMetrics, parse_metrics
from synthrec.contract.summaries import TrainSummary
from synthrec.storage import existing_commit, write_marker
from synthrec.workers import tracking
from synthrec.workers.features import (
    FeatureSet,
    RunFeatures,
    SyntheticData,
    held_out_per_class,
    held_out_shots,
    open_synthetic,
)
from synthrec.workers.runtime import ConfigError, DataError, StageContext, select_device

log = logging.getLogger(__name__)

MAX_CURVE_POINTS = 2000
SINGLE_THREAD_MACS = 50_000_000  # head-only steps below this many multiply-adds run on one CPU thread


def run(ctx: StageContext) -> TrainSummary:
    task = ctx.task
    storage = ctx.storage
    layout = ExperimentLayout(storage.uri)
    name = task.run.name
    if existing_commit(
        storage, layout.run_marker(name), task.spec_hash, what=f"run {layout.url(f'runs/{name}/')}"
    ):
        uri = layout.url(layout.run_metrics(name))
        try:
            metrics = parse_metrics(storage.read_bytes(layout.run_metrics(name)), uri)
        except DocumentError as exc:
            raise DataError(f"{exc}; delete runs/{name}/ to train the run again") from None
        return _summary(metrics, uri, skipped=True)
    return _Run(ctx).execute()


def _summary(metrics: RunMetrics, uri: str, *, skipped: bool = False) -> TrainSummary:
    return TrainSummary(
        run=metrics.run,
        method=metrics.method,
        top1=metrics.top1,
        top1_last=metrics.top1_last,
        top1_best_validation=metrics.top1_best_validation,
        zero_shot_top1=metrics.zero_shot_top1,
        metrics=uri,
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------------ the run


class _Run(RunFeatures):
    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.task = ctx.task
        self.spec = ctx.task.experiment
        self.plan = ctx.task.run
        self.ct = ctx.task.run.classifier_tuning
        self.storage = ctx.storage
        self.layout = ExperimentLayout(ctx.storage.uri)
        self.labels: ResolvedLabels = resolve_labels(ctx.task.experiment.labels)
        self.timing: dict[str, float] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="synthrec-train-"))

    def execute(self) -> TrainSummary:
        import shutil

        try:
            return self._execute()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _execute(self) -> TrainSummary:
        started = time.monotonic()
        data = self.spec.data
        if self.plan.shots > 0 and data.real_train is None:
            raise ConfigError(f"run {self.plan.name}: {self.plan.shots} shots need data.realTrain")
        datasets = [open_synthetic(self.ctx, inp) for inp in self.task.datasets]

        import torch

        from synthrec.workers.clip import load_clip, set_torch_threads
        from synthrec.workers.tuning import LinearHead, evaluate

        set_torch_threads()
        self.device = select_device()
        t = time.monotonic()
        self.clip = load_clip(
            self.spec.backbone.model,
            self.spec.backbone.pretrained,
            self.device,
            storage_opts={"endpoint": self.task.output.endpoint, "region": self.task.output.region},
        )
        templates = self.ct.head_init_templates or list(self.labels.templates)
        text = self.clip.text_head(self.labels.head_names, templates)
        scale = self.clip.logit_scale
        self.timing["model"] = time.monotonic() - t

        t = time.monotonic()
        test = self._real_split("test", data.test)
        val = self._real_split("validation", data.validation) if data.validation is not None else None
        real = self._real_shots() if self.plan.shots > 0 else None
        if val is not None:
            val.info["validation"] = {"source": "data.validation", "images": len(val)}
        elif real is not None and self.plan.selection() == "best-validation":
            real, val = held_out_shots(real, held_out_per_class(self.plan.shots))
        if val is None and self.plan.selection() == "best-validation" and (datasets or real is not None):
            raise ConfigError(
                f"run {self.plan.name}: selection best-validation needs data.validation, or at least 2 real "
                "shots per class to hold out (never the test set)"
            )
        syn = self._synthetic(datasets) if datasets else None
        self.timing["features"] = time.monotonic() - t

        C = len(self.labels)
        teacher = LinearHead.from_text(text, scale).to(self.device)
        zero_shot = evaluate(self._logits(teacher, test), test.labels, C)
        trained = bool(syn or real)  # 0 shots and no synthetic data: the zero-shot head is the result
        t = time.monotonic()
        if self.plan.method in SHOT_METHODS:
            from synthrec.workers.baselines import fit

            fitted = fit(self, text, scale, val, real)
        else:
            fitted = self._classifier_tuning(text, scale, teacher, syn, real, val, trained)
        self.timing["train"] = time.monotonic() - t
        t = time.monotonic()
        with torch.no_grad():
            final = evaluate(fitted.logits(test), test.labels, C)
            other = evaluate(fitted.other(test), test.labels, C) if fitted.other is not None else None
            val_final = evaluate(fitted.logits(val), val.labels, C) if val is not None else None
        self.timing["evaluate"] = time.monotonic() - t
        self.timing["total"] = time.monotonic() - started
        metrics = self._metrics(
            zero_shot, final, other, val_final, fitted, datasets, test, val, real, syn, trained
        )
        confusions = confusion.document(self.labels.names, final["confusion"], zero_shot["confusion"])
        # Tracking never raises: a backend that cannot log only warns.
        metrics.tracking = tracking.log_run(self.task, self.storage, metrics.document(), fitted.result)
        self._write(fitted, metrics, confusions)
        return _summary(metrics, self.layout.url(self.layout.run_metrics(self.plan.name)))

    def _classifier_tuning(
        self, text: Any, scale: float, teacher: Any, syn: Any, real: Any, val: Any, trained: bool
    ) -> Any:
        """The paper's CT (and zero-shot CLIP when there is nothing to train on) as a Fitted model."""
        from synthrec.workers.baselines import Fitted
        from synthrec.workers.tuning import LinearHead, load_snapshot, snapshot

        C = len(self.labels)
        if self.ct.head_init == "text" or not trained:
            head = LinearHead.from_text(text, scale).to(self.device)
        else:
            head = LinearHead.random(C, text.shape[1], self.plan.seed, self.device)
        result = encoder = None
        if trained:
            result, encoder = self._tune(head, teacher, syn, real, val)

        def logits(fs: FeatureSet) -> Any:
            return self._logits(head, fs, encoder)

        other = None
        if result is not None and result.alternative is not None:
            alternative = result.alternative

            def other(fs: FeatureSet) -> Any:  # the model not reported, swapped in for a moment
                current = snapshot(head, encoder, 0)
                load_snapshot(head, encoder, alternative)
                try:
                    return self._logits(head, fs, encoder)
                finally:
                    load_snapshot(head, encoder, current)

        ct = self.ct
        return Fitted(
            logits,
            other,
            result,
            {"weight": head.weight, "bias": head.bias},
            "image features, L2-normalised inside the head: logits = normalize(x) @ W.T + b",
            ct.lr,
            ct.epochs,
            "linear warmup + cosine to 0 over the real steps",
        )

    # ------------------------------------------------------------------------------------- training

    def _logits(self, head: Any, fs: FeatureSet | None, encoder: Any = None) -> Any:
        import torch

        if fs is None:
            return None
        with torch.no_grad():
            if encoder is None:
                return head(fs.features)
            return head(self._encode_with(encoder, fs))

    def _encode_with(self, encoder: Any, fs: FeatureSet) -> Any:
        """Features of ``fs`` through the tuned image tower (eval mode), for evaluation."""
        import torch

        from synthrec.workers.decode import image_loader

        encoder.visual.eval()
        dataset = self.clip.dataset(fs.items, fs.reader)
        chunks = []
        with torch.no_grad():
            for images, _, _ in image_loader(
                dataset, batch_size=self.ct.feature_batch_size, device=self.device
            ):
                chunks.append(torch.nn.functional.normalize(encoder.encode(images), dim=-1))
        return torch.cat(chunks)

    def _tune(
        self, head: Any, teacher: Any, syn: FeatureSet | None, real: FeatureSet | None, val: FeatureSet | None
    ) -> tuple[Any, Any]:
        from synthrec.workers.decode import image_loader
        from synthrec.workers.tuning import CachedFeatures, EncoderFeatures, tune

        ct = self.ct
        encoder = None
        if self.ct.trainable_scope == "head":
            source: Any = CachedFeatures(syn.features if syn else None, real.features if real else None)
        else:
            sets = {"syn": syn, "real": real}

            def make_loader(split: str, batches: list[list[int]]) -> Any:
                fs = sets[split]
                dataset = self.clip.dataset(fs.items, fs.reader)
                return image_loader(dataset, batch_sampler=batches, device=self.device)

            encoder = source = EncoderFeatures(
                self.clip.visual,
                self.ct.trainable_scope,
                make_loader,
                self.device,
                self.ct.freeze_batch_norm,
                normalize=self.clip.normalize,
            )
        validate = None
        if val is not None:  # every epoch, whatever the selection: a run reports both models
            from synthrec.workers.tuning import evaluate

            def validate() -> float:
                return evaluate(self._logits(head, val, encoder), val.labels, len(self.labels))["top1"]

        from synthrec.workers.tuning import plan_phases, steps_per_epoch

        n_syn, n_real = (len(syn) if syn else 0), (len(real) if real else 0)
        self.ctx.progress.start(
            sum(
                p.epochs * steps_per_epoch(p.kind, n_syn, n_real, ct.batch_size_synthetic, ct.batch_size_real)
                for p in plan_phases(ct.mixing, n_syn, n_real, ct.epochs)
            )
        )
        with small_kernel_threads(
            self.device, encoder is None, head.weight.numel() * ct.batch_size_synthetic
        ):
            result = tune(
                head,
                teacher,
                source,
                syn.features if syn else None,
                syn.labels if syn else None,
                real.labels if real else None,
                ct,
                self.plan.seed,
                validate=validate,
                on_step=self.ctx.progress.advance,
            )
        return result, encoder

    # ----------------------------------------------------------------------------------- artifacts

    def _metrics(
        self,
        zero_shot: dict,
        final: dict,
        other: dict | None,
        val_final: dict | None,
        fitted: Any,
        datasets: list[SyntheticData],
        test: FeatureSet,
        val: FeatureSet | None,
        real: FeatureSet | None,
        syn: FeatureSet | None,
        trained: bool,
    ) -> RunMetrics:
        names = self.labels.names
        per_class = [
            {**pc, "name": names[pc["index"]], "zero_shot_top1": zs["top1"]}
            for pc, zs in zip(final["per_class"], zero_shot["per_class"], strict=True)
        ]
        ct, plan, result = self.ct, self.plan, fitted.result
        selection = plan.selection()
        top1_last = final["top1"] if selection == "last" or other is None else other["top1"]
        top1_best_validation = None
        if other is not None:
            top1_best_validation = other["top1"] if selection == "last" else final["top1"]
        return RunMetrics.model_validate(
            {
                "run": plan.name,
                "index": plan.index,
                "variant": plan.variant,
                "method": plan.method,
                "spec_hash": self.task.spec_hash,
                "shots": plan.shots,
                "seed": plan.seed,
                "seeds": {"shots": plan.seed, "shuffle": plan.seed, "head_init": plan.seed},
                "top1": final["top1"],
                "top1_last": top1_last,
                "top1_best_validation": top1_best_validation,
                "zero_shot_top1": zero_shot["top1"],
                "trained": trained,
                "selection": selection,
                "selected_epoch": result.selected_epoch if result else None,
                "best_validation_epoch": result.best_validation_epoch if result else None,
                "validation_top1": val_final["top1"] if val_final else None,
                "validation": val.info.get("validation") if val is not None else None,
                "per_class": per_class,
                "confusion": self.layout.run_confusion(plan.name),
                "classes": names,
                "epochs": fitted.epochs if trained else 0,
                "epochs_run": len(result.epochs) if result else 0,
                "phases": result.phases if result else [],
                "steps": len(result.steps) if result else 0,
                "lr": fitted.lr if trained else None,
                "schedule": {
                    "warmup_steps": ct.warmup_steps if plan.method == "classifier-tuning" else 0,
                    "kind": fitted.schedule,
                },
                "classifier_tuning": ct.model_dump(mode="json")
                if plan.method == "classifier-tuning"
                else None,
                "settings": plan.settings(),
                "details": fitted.details,
                "backbone": self.clip.describe(),
                "head_templates": ct.head_init_templates or list(self.labels.templates),
                "counts": {
                    "synthetic": len(syn) if syn else 0,
                    "real_train": len(real) if real else 0,
                    "real_train_replaced": real.skipped if real else 0,
                    "test": len(test),
                    "test_skipped": test.skipped,
                    "validation": len(val) if val else 0,
                    "validation_skipped": val.skipped if val else 0,
                },
                "datasets": [
                    {"name": d.name, "uri": d.uri, "digest": d.digest, "kept": len(d.rows)} for d in datasets
                ],
                "feature_cache": {
                    fs.name: {"key": fs.cache_key, "hit": fs.cache_hit}
                    for fs in (test, val, real, syn)
                    if fs is not None
                },
                "device": self.device,
                "timing": {k: round(v, 3) for k, v in self.timing.items()},
            }
        )

    def _write(self, fitted: Any, metrics: RunMetrics, confusions: dict[str, Any]) -> None:
        from safetensors.torch import save

        name = self.plan.name
        layout = self.layout
        weights = save(
            {k: v.detach().float().cpu().contiguous() for k, v in fitted.tensors.items()},
            metadata={
                "run": name,
                "method": self.plan.method,
                "backbone": json.dumps(self.clip.describe()),
                "classes": json.dumps(self.labels.names),
                "input": fitted.formula,
            },
        )
        self.storage.write_bytes(layout.run(name, "head.safetensors"), weights)
        curve = _curve(fitted.result)
        self.storage.write_json(layout.run(name, "curve.json"), curve)
        png = _plot(curve, name)
        if png is not None:
            self.storage.write_bytes(layout.run(name, "curve.png"), png)
        self.storage.write_json(layout.run_confusion(name), confusions)
        self.storage.write_json(layout.run_metrics(name), metrics.document())
        write_marker(
            self.storage,
            layout.run_marker(name),
            spec_hash=self.task.spec_hash,
            top1=metrics.top1,
            zero_shot_top1=metrics.zero_shot_top1,
        )


@contextlib.contextmanager
def small_kernel_threads(device: str, head_only: bool, macs_per_step: int) -> Iterator[None]:
    """Head-only tuning on a CPU runs tiny matmuls; with several OpenMP threads each kernel waits at a
    barrier, which on a shared host made it ~20x slower (bench/train_features.py). One thread then."""
    import torch

    if device != "cpu" or not head_only or macs_per_step > SINGLE_THREAD_MACS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _curve(result: Any) -> dict[str, Any]:
    if result is None:
        return {"epochs": [], "steps": [], "step_stride": 1, "phases": []}
    stride = max(1, -(-len(result.steps) // MAX_CURVE_POINTS))
    steps = [{"step": i, **s} for i, s in enumerate(result.steps) if i % stride == 0]
    return {"epochs": result.epochs, "steps": steps, "step_stride": stride, "phases": result.phases}


def _plot(curve: dict[str, Any], name: str) -> bytes | None:
    """A PNG of the loss and learning rate per step, or None (no steps, or no matplotlib). Uses the
    Figure API directly: importing pyplot costs seconds and a GUI backend lookup."""
    if not curve["steps"]:
        return None
    try:
        import io

        from matplotlib.figure import Figure
    except ImportError:
        return None
    steps = [s["step"] for s in curve["steps"]]
    fig = Figure(figsize=(7, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(steps, [s["loss"] for s in curve["steps"]], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [s["lr"] for s in curve["steps"]], color="tab:orange", label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(name)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
