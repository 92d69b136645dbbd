"""synthrec scaffold: write the paper's sets of resources (Table 1, Figure 1) from the label presets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "scaffold",
        help="write the resources that reproduce a table or figure of the paper",
        description="table1: one YAML file per dataset of the paper's Table 1 (17 datasets): its "
        "SyntheticDataset (Language Enhancement, the generator, the CLIP Filter) and a RecognitionExperiment "
        "per backbone, with your data and output locations, plus a README with the paper's baselines. "
        "Existing files in DIR are replaced; nothing else there is touched. figure1: one YAML file with the "
        "few-shot Figure 1 of one dataset (--preset): a Real Guidance SyntheticDataset per (shots, seed) and "
        "one RecognitionExperiment running zero-shot CLIP, CT w. init, CT w. Syn, Tip-Adapter(-F) and CoOp.",
        examples=[
            "synthrec scaffold table1 --out examples/table1",
            "synthrec scaffold table1 --out my-table1 --data s3://my-bucket/datasets/ "
            "--output s3://my-bucket/synthrec/ --images-per-class 500 --keep-per-class 200",
            "synthrec scaffold figure1 --preset eurosat --out examples/eurosat-few-shot.yaml",
            "synthrec scaffold figure1 --preset sun397 --data s3://my-bucket/datasets/ --out sun.yaml",
        ],
        func=run,
    )
    p.add_argument(
        "table",
        choices=["table1", "figure1"],
        help="table1 (zero-shot, 17 datasets, a folder) or figure1 (few-shot, one dataset, a file)",
    )
    p.add_argument("--out", required=True, help="table1: folder to write into (created); figure1: the file")
    p.add_argument(
        "--data", default="s3://datasets/", help="data root: <data><preset>/test/ (figure1: train/, val/ too)"
    )
    p.add_argument("--preset", default="eurosat", help="figure1: the dataset (a label preset)")
    p.add_argument("--shots", default="1,2,4,8,16", help="figure1: comma-separated shot counts")
    p.add_argument(
        "--no-validation", action="store_true", help="figure1: the data has no val/ split (none is read)"
    )
    p.add_argument("--output", default="s3://synthrec/", help="artifact root: datasets/ and experiments/")
    p.add_argument(
        "--credentials-secret",
        default="synthrec-s3",
        help="Secret with the S3 keys ('' for none: IRSA, Workload Identity or file://)",
    )
    p.add_argument(
        "--generator", default="hf://stabilityai/stable-diffusion-2-1-base", help="diffusers model"
    )
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance")
    p.add_argument(
        "--images-per-class",
        type=int,
        default=None,
        help="generated per class (table1: 2000, the paper's; figure1: 800 per Real Guidance dataset)",
    )
    p.add_argument("--keep-per-class", type=int, default=800, help="kept by the CLIP Filter (paper: 800)")
    p.add_argument(
        "--backbones", default="RN50,ViT-B/16", help="comma-separated Table 1 columns: RN50, ViT-B/16"
    )
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of each experiment")


def run(args: argparse.Namespace) -> int:
    if args.table == "figure1":
        return _figure1(args)
    from synthrec import scaffold

    try:
        options = scaffold.Table1Options(
            data=args.data,
            output=args.output,
            credentials_secret=args.credentials_secret or None,
            generator=args.generator,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            images_per_class=args.images_per_class or 2000,
            keep_per_class=args.keep_per_class,
            backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()),
            seeds=_ints(args.seeds),
        )
        files = scaffold.table1(options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        if path.suffix == ".yaml":
            bad += _check(path)
    print(f"wrote {len(files)} files to {out}/ ({len(files) - 1} datasets of Table 1 and README.md)")
    return 1 if bad else 0


def _figure1(args: argparse.Namespace) -> int:
    from synthrec.scaffold_figure1 import Figure1Options, figure1

    try:
        text = figure1(
            Figure1Options(
                preset=args.preset,
                data=args.data,
                validation=not args.no_validation,
                output=args.output,
                credentials_secret=args.credentials_secret or None,
                generator=args.generator,
                steps=args.steps,
                guidance_scale=args.guidance_scale,
                images_per_class=args.images_per_class or 800,
                shots=_ints(args.shots),
                seeds=_ints(args.seeds),
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    bad = _check(path)
    print(f"wrote {path} (Figure 1 of {args.preset}: the Real Guidance datasets and the experiment)")
    return 1 if bad else 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{text!r}: expected comma-separated whole numbers, e.g. 1,2,3") from None


def _check(path: Path) -> int:
    """Problems of a written file (the options reach the resources unchecked: say at once what the cluster
    would refuse); prints them and returns how many."""
    from synthrec.api.validation import FileError, load_documents, validate_resource

    try:
        docs = load_documents(path)
    except FileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bad = 0
    for doc in docs:
        for problem in validate_resource(doc.body):
            print(f"{path}: {doc.label}: {problem}", file=sys.stderr)
            bad += 1
    return bad
