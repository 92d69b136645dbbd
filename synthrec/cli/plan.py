"""synthrec plan: show what a file of resources would run, without running it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "plan",
        help="show the stages, shards and runs a file would execute",
        description="Validate the resources in a file and print the plan: each dataset's stages with their "
        "shard counts and spec hashes, the generation size, the CLIP Filter's prompts and Real Guidance's "
        "strength with the signal level (alpha-bar) it starts from, and each experiment's runs (shots x "
        "seeds x variants). Nothing runs.",
        examples=[
            "synthrec plan examples/quickstart.yaml",
            "synthrec plan examples/eurosat-few-shot.yaml --hub   # RG strength from the model's scheduler",
        ],
        func=run,
    )
    p.add_argument("file", help="YAML file with one or more resources")
    p.add_argument(
        "--hub",
        action="store_true",
        help="read a hf:// generator's scheduler and size configs from the Hugging Face hub when they are "
        "not in the local cache (a few KB, no weights), to show Real Guidance's strength and the native size",
    )


def run(args: argparse.Namespace) -> int:
    from synthrec import api, plan
    from synthrec.api.validation import FileError, load_documents, validate_resource

    try:
        docs = load_documents(args.file)
    except FileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bad = False
    for doc in docs:
        problems = validate_resource(doc.body)
        if problems:
            bad = True
            for problem in problems:
                print(f"{args.file}: document {doc.index} ({doc.label}): {problem}", file=sys.stderr)
            continue
        res = api.parse_resource(doc.body)
        print(f"{res.kind}/{res.metadata.name} -> {res.spec.output.uri}")
        if isinstance(res, api.SyntheticDataset):
            for stage in plan.dataset_stages(res.spec):
                state = "" if stage.enabled else "  (disabled)"
                print(f"  {stage.stage:9s} shards={stage.shards:<5d} hash={stage.spec_hash[:12]}{state}")
            for line in describe_dataset(res.spec, hub=args.hub):
                print(f"  {line}")
        elif res.spec.method.pretrain is not None:
            for line in describe_pretraining(res.spec):
                print(f"  {line}")
        else:
            runs = plan.experiment_runs(res.spec)
            print(f"  {len(runs)} runs, up to {res.spec.execution.parallelism} at once")
            validation = res.spec.data.validation is not None
            for r in runs:
                line = describe_run(r, validation=validation)
                print(f"  {r.name:28s} shots={r.shots:<3d} seed={r.seed:<3d} {line}")
    return 1 if bad else 0


def describe_pretraining(spec: Any) -> list[str]:
    """A pre-training experiment's runs: the matrix cell, the stages and where torchrun runs them."""
    from synthrec import plan

    method = spec.method.pretrain
    nodes, gpus = method.distributed.nodes, spec.resources.gpus
    world = f"{nodes} node(s) x {max(1, gpus)} process(es) on a cluster; locally one process per GPU"
    runs = plan.pretrain_runs(spec)
    lines = [
        f"{len(runs)} runs of {method.backbone}, global batch {method.batch_size} ({world}), "
        f"up to {spec.execution.parallelism} at once"
    ]
    for r in runs:
        data = ", ".join(s.dataset_ref or s.uri or "" for s in r.synthetic) or "none"
        size = "all" if r.size is None else f"{r.size:,}"
        stages = " + ".join(plan.run_stages(spec, r))
        lines.append(
            f"{r.name:32s} {r.objective:10s} size={size:<11s} init={r.init}  [{stages}]  data: {data}"
        )
    return lines


def describe_run(run: Any, *, validation: bool) -> str:
    """The run's method with what decides its training and which model it reports, as the plan resolved
    it (the defaults, last epoch and soft pseudo labels, are not repeated). ``validation``: the experiment
    has data.validation, on which Tip-Adapter searches alpha and beta (without it, they stay)."""
    if run.method == "zero-shot":
        return "zero-shot CLIP (no training)"
    if run.method in ("tip-adapter", "tip-adapter-f"):
        t = run.tip_adapter
        search = ", then searched on the validation set" if t.search and validation else ""
        if run.method == "tip-adapter":
            return f"tip-adapter alpha={t.alpha:g} beta={t.beta:g}{search}"
        line = f"tip-adapter-f epochs={t.epochs} lr={t.lr:g} alpha={t.alpha:g} beta={t.beta:g}"
        return line + _selected(t.selection) + search
    if run.method == "coop":
        c = run.coop
        line = f"coop epochs={c.epochs} lr={c.lr:g} context={c.context_init or c.context_tokens}"
        return line + _selected(c.selection)
    data = ", ".join(s.dataset_ref or s.uri or "" for s in run.synthetic) or "real only"
    ct = run.classifier_tuning
    line = f"classifier-tuning epochs={ct.epochs} lr={ct.lr or 0.0:g}"
    if ct.soft_target.pseudo_labels == "hard":
        line += " pseudo-labels=hard"
    return f"{line}{_selected(ct.selection)}  synthetic: {data}"


def _selected(selection: str) -> str:
    return "" if selection == "last" else f" selection={selection}"


def describe_dataset(spec: Any, *, hub: bool = False) -> list[str]:
    """What the generate and filter stages will do that a reader of the spec cannot see at a glance: the
    generation size, the CLIP Filter's prompts and Real Guidance's strength with the signal level it
    reaches. Values that depend on the model are read from its configs where they are here (file://,
    tiny://, the local Hugging Face cache) and otherwise said to be decided when generating."""
    from synthrec.api.labels import filter_prompts, resolve_labels
    from synthrec.cli.model_files import native_size

    gen = spec.generator
    lines = []
    if gen.generation_resolution is not None:
        size = f"{gen.generation_resolution} px (generator.generationResolution)"
    else:
        native = native_size(gen.model, hub=hub)
        size = (
            f"the pipeline's native {native.value['size']} px"
            if native.value
            else f"the pipeline's native size (read when loading: {native.why_not})"
        )
    lines.append(
        f"generate: {gen.steps} steps, guidance {gen.guidance_scale:g}, at {size}, stored at "
        f"{gen.resolution} px"
    )
    labels = resolve_labels(spec.labels)
    if spec.filter.enabled:
        prompts = filter_prompts(labels, spec.filter.prompts)
        shown = " | ".join(prompts.templates[:3]) + (" | ..." if len(prompts.templates) > 3 else "")
        names = "generation" if spec.filter.prompts == "filter-template" else "head"
        lines.append(
            f"filter prompts: {spec.filter.prompts}, {len(prompts.templates)} x {len(labels)} {names} names "
            f"({shown}); e.g. {prompts.prompts(0)[0]!r}"
        )
    if spec.real_guidance is not None:
        lines.append(describe_real_guidance(spec, hub=hub))
    return lines


def describe_real_guidance(spec: Any, *, hub: bool = False) -> str:
    from synthrec.cli.model_files import read_model_json
    from synthrec.noise_levels import (
        ConfigSchedule,
        UnsupportedSchedule,
        glide_start_timestep,
        paper_refer_img_iters,
        resolve_start,
    )

    rg, gen = spec.real_guidance, spec.generator
    target = rg.target_alpha_bar()
    if rg.strength is not None:
        head = f"realGuidance: {rg.shots} shots, explicit strength {rg.strength:g}"
    elif rg.alpha_bar is not None:
        head = f"realGuidance: {rg.shots} shots, target alpha-bar {target:.3f} (realGuidance.alphaBar)"
    else:
        t = glide_start_timestep(paper_refer_img_iters(rg.shots))
        head = (
            f"realGuidance: {rg.shots} shots, target alpha-bar {target:.3f} (the paper's: GLIDE cosine t={t})"
        )
    found = read_model_json(gen.model, "scheduler/scheduler_config.json", hub=hub)
    if found.value is None:
        return f"{head} -> strength decided when generating ({found.why_not})"
    name = gen.scheduler or str(found.value.get("_class_name"))
    try:
        schedule = ConfigSchedule(name, found.value)
        start = resolve_start(target, rg.strength, gen.steps, schedule.start(gen.steps))
    except UnsupportedSchedule as exc:
        return f"{head} -> strength decided when generating ({exc})"
    except ValueError as exc:
        return f"{head} -> error: {exc}"
    return (
        f"{head} -> strength {start.strength:.4g} on {name}: {start.steps_run} of {gen.steps} steps from "
        f"t={start.timestep:g}, alpha-bar {start.alpha_bar:.3f}"
    )
