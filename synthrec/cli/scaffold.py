"""synthrec scaffold: write the paper's sets of resources (Table 1) from the label presets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthrec.cli.common import add_command


def register(subparsers: object) -> None:
    p = add_command(
        subparsers,
        "scaffold",
        help="write the resources that reproduce a table of the paper",
        description="Write one YAML file per dataset of the paper's Table 1 (17 datasets): its "
        "SyntheticDataset (Language Enhancement, the generator, the CLIP Filter) and a RecognitionExperiment "
        "per backbone, with your data and output locations, plus a README with the paper's baselines. "
        "Existing files in DIR are replaced; nothing else there is touched.",
        examples=[
            "synthrec scaffold table1 --out examples/table1",
            "synthrec scaffold table1 --out my-table1 --data s3://my-bucket/datasets/ "
            "--output s3://my-bucket/synthrec/ --images-per-class 500 --keep-per-class 200",
        ],
        func=run,
    )
    p.add_argument("table", choices=["table1"], help="which table: table1 (zero-shot, 17 datasets)")
    p.add_argument("--out", required=True, help="folder to write into (created if missing)")
    p.add_argument("--data", default="s3://datasets/", help="test data root: <data><preset>/test/")
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
    p.add_argument("--images-per-class", type=int, default=2000, help="generated per class (paper: 2000)")
    p.add_argument("--keep-per-class", type=int, default=800, help="kept by the CLIP Filter (paper: 800)")
    p.add_argument(
        "--backbones", default="RN50,ViT-B/16", help="comma-separated Table 1 columns: RN50, ViT-B/16"
    )
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of each experiment")


def run(args: argparse.Namespace) -> int:
    from synthrec import scaffold
    from synthrec.api.validation import FileError, load_documents, validate_resource

    try:
        options = scaffold.Table1Options(
            data=args.data,
            output=args.output,
            credentials_secret=args.credentials_secret or None,
            generator=args.generator,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            images_per_class=args.images_per_class,
            keep_per_class=args.keep_per_class,
            backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()),
            seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()),
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
            try:  # the options reach the resources unchecked: say at once what the cluster would refuse
                docs = load_documents(path)
            except FileError as exc:
                print(f"error: {exc}", file=sys.stderr)
                bad += 1
                continue
            for doc in docs:
                for problem in validate_resource(doc.body):
                    print(f"{path}: {doc.label}: {problem}", file=sys.stderr)
                    bad += 1
    print(f"wrote {len(files)} files to {out}/ ({len(files) - 1} datasets of Table 1 and README.md)")
    return 1 if bad else 0
