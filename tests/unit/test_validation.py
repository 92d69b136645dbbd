"""`synthrec validate`: every example is valid; bad resources fail with a message naming the field."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthrec import api
from synthrec.api.validation import load_documents, validate_file, validate_resource

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def dataset(**spec: Any) -> dict[str, Any]:
    base = {
        "labels": {"preset": "eurosat"},
        "generator": {"model": "hf://org/model"},
        "output": {"uri": "s3://bucket/ds/"},
    }
    base.update(spec)
    return {
        "apiVersion": api.API_VERSION,
        "kind": "SyntheticDataset",
        "metadata": {"name": "ds"},
        "spec": base,
    }


def experiment(**spec: Any) -> dict[str, Any]:
    base = {
        "labels": {"preset": "eurosat"},
        "data": {"synthetic": [{"datasetRef": "ds"}], "test": {"uri": "s3://bucket/test/"}},
        "output": {"uri": "s3://bucket/exp/"},
    }
    base.update(spec)
    return {
        "apiVersion": api.API_VERSION,
        "kind": "RecognitionExperiment",
        "metadata": {"name": "exp"},
        "spec": base,
    }


def pretraining() -> dict[str, Any]:
    """A valid pre-training experiment (Table 8's shape): 8 GPUs per pod, fine-tuning transfer."""
    return experiment(
        labels={"preset": "cifar100"},
        data={
            "synthetic": [{"datasetRef": "c100"}],
            "realTrain": {"uri": "s3://bucket/c100/train/"},
            "test": {"uri": "s3://bucket/c100/test/"},
        },
        method={"pretrain": {"batchSize": 1024, "transfer": {"classification": {}}}},
        matrix={"dataSizes": [0, 1200000], "inits": ["scratch", "timm:tv_in1k"]},
        resources={"gpus": 8},
    )


def test_a_pretraining_experiment_is_valid() -> None:
    assert validate_resource(pretraining()) == []


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path set (or removed when value is DELETE)."""
    out = copy.deepcopy(doc)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return out


DELETE = object()


def few_shot() -> dict[str, Any]:
    return with_(experiment(), "spec.data.realTrain", {"uri": "s3://bucket/train/"})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    report = validate_file(path)
    assert report.results, f"{path} holds no resources"
    for doc, problems in report.results:
        assert problems == [], f"{path} {doc.label}: {problems}"


def test_examples_cover_the_papers_settings() -> None:
    kinds = {}
    for path in EXAMPLES:
        for doc in load_documents(path):
            kinds.setdefault(path.name, []).append(api.parse_resource(doc.body))
    zero = {r.kind: r for r in kinds["eurosat-zero-shot.yaml"]}
    assert zero["SyntheticDataset"].spec.prompts.strategy == "language-enhancement"
    assert zero["SyntheticDataset"].spec.filter.enabled
    assert zero["SyntheticDataset"].spec.filter.prompts == "filter-template"
    assert zero["RecognitionExperiment"].spec.method.classifier_tuning.soft_target.weight == 0.5
    # Table 1's two columns from one synthetic dataset: RN50 and a ViT-B/16 zero-shot example.
    backbones = [
        r.spec.backbone.model for r in kinds["eurosat-zero-shot.yaml"] if r.kind == "RecognitionExperiment"
    ]
    assert backbones == ["RN50", "ViT-B-16"]
    # Stable Diffusion examples: diffusers' defaults (50 steps, guidance 7.5), generated at the native size.
    for name, resources in kinds.items():
        for r in resources:
            if r.kind == "SyntheticDataset" and r.spec.generator.model.startswith("hf://stabilityai/"):
                gen = r.spec.generator
                assert (gen.steps, gen.guidance_scale, gen.generation_resolution) == (50, 7.5, None), name
    few = {r.kind: r for r in kinds["eurosat-few-shot.yaml"]}
    assert few["SyntheticDataset"].spec.real_guidance.shots == 16
    assert few["SyntheticDataset"].spec.filter.real_filtering.enabled
    assert few["RecognitionExperiment"].spec.method.classifier_tuning.mixing == "mixed"
    strategies = {
        r.spec.prompts.strategy for r in kinds["ablation-basic-vs-le.yaml"] if r.kind == "SyntheticDataset"
    }
    assert strategies == {"basic", "language-enhancement"}
    quick = {r.kind: r for r in kinds["quickstart.yaml"]}
    assert quick["SyntheticDataset"].spec.generator.model == "tiny://world/sd"  # the trained toy world
    mechanics = {r.kind: r for r in kinds["tiny-mechanics.yaml"]}
    assert mechanics["SyntheticDataset"].spec.generator.model == "tiny://sd"  # random weights


INVALID = [
    # (id, resource, expected field path, expected words in the message)
    (
        "shards-not-a-number",
        with_(dataset(), "spec.sharding", {"shards": "many"}),
        "spec.sharding.shards",
        "integer",
    ),
    ("shards-zero", with_(dataset(), "spec.sharding", {"shards": 0}), "spec.sharding.shards", "minimum"),
    (
        "parallelism-over-shards",
        with_(dataset(), "spec.sharding", {"shards": 4, "parallelism": 8}),
        "spec.sharding.parallelism",
        "must not exceed",
    ),
    (
        "max-failed-not-below-shards",
        with_(dataset(), "spec.sharding", {"shards": 4, "maxFailedShards": 4}),
        "spec.sharding.maxFailedShards",
        "smaller than",
    ),
    (
        "unknown-preset",
        with_(dataset(), "spec.labels", {"preset": "cifar11"}),
        "spec.labels.preset",
        "not one of",
    ),
    (
        "preset-and-classes",
        with_(dataset(), "spec.labels", {"preset": "eurosat", "classes": [{"name": "a"}]}),
        "spec.labels",
        "exactly one",
    ),
    ("no-label-space", with_(dataset(), "spec.labels", {}), "spec.labels", "exactly one"),
    ("unknown-field", with_(dataset(), "spec.generator.stepz", 10), "spec.generator.stepz", "unknown field"),
    ("unknown-top-field", with_(dataset(), "spec.foo", 1), "spec.foo", "unknown field"),
    (
        "http-output",
        with_(dataset(), "spec.output.uri", "http://x/y"),
        "spec.output.uri",
        "unsupported storage",
    ),
    ("bad-bucket", with_(dataset(), "spec.output.uri", "s3://B_ad/x"), "spec.output.uri", "bucket name"),
    (
        "tiny-output",
        with_(dataset(), "spec.output.uri", "tiny://real/x"),
        "spec.output.uri",
        "tiny:// is built-in read-only data",
    ),
    (
        "relative-file",
        with_(dataset(), "spec.output.uri", "file://out/x"),
        "spec.output.uri",
        "need an absolute path",
    ),
    ("dotdot-output", with_(dataset(), "spec.output.uri", "s3://bucket/a/../b"), "spec.output.uri", "'..'"),
    (
        "bad-model-ref",
        with_(dataset(), "spec.generator.model", "not a ref!"),
        "spec.generator.model",
        "not a model reference",
    ),
    ("missing-model", with_(dataset(), "spec.generator.model", DELETE), "spec.generator.model", "required"),
    (
        "resolution-not-x8",
        with_(dataset(), "spec.generator.resolution", 250),
        "spec.generator.resolution",
        "multiple of 8",
    ),
    (
        "negative-guidance",
        with_(dataset(), "spec.generator.guidanceScale", -1),
        "spec.generator.guidanceScale",
        "minimum",
    ),
    (
        "threshold-over-1",
        with_(dataset(), "spec.filter", {"threshold": 1.5}),
        "spec.filter.threshold",
        "between 0 and 1",
    ),
    (
        "zero-strength",
        with_(dataset(), "spec.realGuidance", {"source": {"uri": "s3://bucket/real/"}, "strength": 0}),
        "spec.realGuidance.strength",
        "minimum",
    ),
    (
        "real-filtering-without-shots",
        with_(dataset(), "spec.filter", {"realFiltering": {"enabled": True}}),
        "spec.filter.realFiltering",
        "needs real shots",
    ),
    (
        "duplicate-class",
        with_(dataset(), "spec.labels", {"classes": [{"name": "cat"}, {"name": "cat"}]}),
        "spec.labels",
        "more than once",
    ),
    (
        "class-name-with-newline",
        with_(dataset(), "spec.labels", {"classes": [{"name": "cat\ndog"}]}),
        "spec.labels.classes[0].name",
        "control characters",
    ),
    (
        "template-without-placeholder",
        with_(dataset(), "spec.labels", {"preset": "eurosat", "templates": ["a photo"]}),
        "spec.labels.templates",
        "{c}",
    ),
    (
        "bad-strategy",
        with_(dataset(), "spec.prompts", {"strategy": "fancy"}),
        "spec.prompts.strategy",
        "not one of",
    ),
    ("bad-memory", with_(dataset(), "spec.resources", {"memory": "lots"}), "spec.resources.memory", "match"),
    ("name-too-long", with_(dataset(), "metadata.name", "d" * 41), "metadata.name", "at most 40"),
    ("name-not-dns", with_(dataset(), "metadata.name", "My_Data"), "metadata.name", "not a valid name"),
    ("unknown-kind", with_(dataset(), "kind", "SyntheticDatasets"), "kind", "unknown kind"),
    (
        "wrong-api-version",
        with_(dataset(), "apiVersion", "synthrec.io/v1"),
        "apiVersion",
        "synthrec.io/v1alpha1",
    ),
    (
        "experiment-without-test",
        with_(experiment(), "spec.data.test", DELETE),
        "spec.data.test",
        "classifier tuning needs data.test",
    ),
    (
        "few-shot-without-real-train",
        with_(experiment(), "spec.matrix", {"shots": [4]}),
        "spec.data.realTrain",
        "need data.realTrain",
    ),
    (
        "negative-shots",
        with_(experiment(), "spec.matrix", {"shots": [-1]}),
        "spec.matrix.shots",
        "between 0 and 1024",
    ),
    (
        "best-epoch-without-validation",
        with_(experiment(), "spec.method", {"classifierTuning": {"selection": "best-validation"}}),
        "spec",
        "needs data.validation (never the test set), or at least 2 real shots per class",
    ),
    (
        "synthetic-ref-and-uri",
        with_(experiment(), "spec.data.synthetic", [{"datasetRef": "ds", "uri": "s3://bucket/ds/"}]),
        "spec.data.synthetic[0]",
        "exactly one",
    ),
    (
        "matrix-too-large",
        with_(
            experiment(),
            "spec.matrix",
            {"shots": [0], "seeds": list(range(33)), "variants": [{"name": f"v{i}"} for i in range(16)]},
        ),
        "spec.matrix",
        "more than 512 runs",
    ),
    (
        "duplicate-variants",
        with_(experiment(), "spec.matrix", {"variants": [{"name": "a"}, {"name": "a"}]}),
        "spec.matrix",
        "unique",
    ),
    (
        "negative-lr",
        with_(experiment(), "spec.method", {"classifierTuning": {"lr": -1}}),
        "spec.method.classifierTuning.lr",
        "minimum",
    ),
    # pre-training (method.pretrain): combinations that cannot run, each named by its field
    (
        "pretrain-batch-not-divisible-by-the-world",
        with_(pretraining(), "spec.method.pretrain.batchSize", 250),
        "spec.method.pretrain.batchSize",
        "divisible by the world size",
    ),
    (
        "pretrain-detection-with-a-vit",
        with_(
            with_(pretraining(), "spec.method.pretrain.backbone", "deit_small_patch16_224"),
            "spec.method.pretrain.transfer",
            {"detection": {"train": [{"uri": "s3://bucket/voc/"}], "test": {"uri": "s3://bucket/voc/"}}},
        ),
        "spec.method.pretrain.transfer.detection",
        "hierarchical backbone",
    ),
    (
        "pretrain-with-shots",
        with_(pretraining(), "spec.matrix.shots", [4]),
        "spec.matrix.shots",
        "belong to classifier tuning",
    ),
    (
        "pretrain-fine-tuning-without-real-train",
        with_(pretraining(), "spec.data.realTrain", DELETE),
        "spec.data.realTrain",
        "set both",
    ),
    (
        "pretrain-fp16-on-cpu",
        with_(with_(pretraining(), "spec.method.pretrain.precision", "fp16"), "spec.resources", {"gpus": 0}),
        "spec.method.pretrain.precision",
        "needs GPUs",
    ),
    (
        "pretrain-moco-queue-not-a-multiple-of-the-batch",
        with_(
            with_(pretraining(), "spec.method.pretrain.objective", "moco-v2"),
            "spec.method.pretrain.batchSize",
            384,
        ),
        "spec.method.pretrain.moco.queue",
        "multiple of method.pretrain.batchSize",
    ),
    (
        "pretrain-size-0-without-transfer",
        with_(
            with_(pretraining(), "spec.method.pretrain.transfer", DELETE), "spec.matrix.dataSizes", [0, 1000]
        ),
        "spec.matrix.dataSizes",
        "set method.pretrain.transfer",
    ),
    (
        "pretrain-axes-without-pretrain",
        with_(experiment(), "spec.matrix.dataSizes", [1000]),
        "spec.matrix",
        "method.pretrain's axes",
    ),
    (
        "pretrain-unknown-init",
        with_(pretraining(), "spec.matrix.inits", ["imagenet"]),
        "spec.matrix.inits",
        "",
    ),
    (
        "pretrain-label-spaces-and-synthetic",
        with_(
            pretraining(), "spec.matrix.labelSpaces", [{"name": "in2k", "synthetic": [{"datasetRef": "b"}]}]
        ),
        "spec.data.synthetic",
        "set one of them",
    ),
    (
        "coop-at-zero-shots",
        with_(few_shot(), "spec.matrix", {"shots": [0, 4], "variants": [{"name": "coop", "method": "coop"}]}),
        "spec",
        "coop learns from real shots and cannot run at 0 shots",
    ),
    (
        "tip-adapter-with-synthetic-data",
        with_(
            few_shot(),
            "spec.matrix",
            {
                "shots": [4],
                "variants": [{"name": "t", "method": "tip-adapter", "synthetic": [{"datasetRef": "ds"}]}],
            },
        ),
        "spec.matrix.variants[0].synthetic",
        "only classifier-tuning trains on synthetic data",
    ),
    (
        "variant-shots-outside-the-matrix",
        with_(few_shot(), "spec.matrix", {"shots": [1, 2], "variants": [{"name": "a", "shots": [4]}]}),
        "spec.matrix.variants",
        "among matrix.shots",
    ),
    (
        "unknown-method",
        with_(few_shot(), "spec.method", {"name": "linear-probe"}),
        "spec.method.name",
        "'linear-probe' is not one of",
    ),
    (
        "dataset-template-with-unknown-placeholder",
        with_(few_shot(), "spec.data.synthetic", [{"datasetRef": "rg-{shot}"}]),
        "spec.data.synthetic[0].datasetRef",
        "does not match",
    ),
    (
        "dataset-template-too-long-once-filled",
        with_(
            with_(
                few_shot(), "spec.data.synthetic", [{"datasetRef": "eurosat-rg-guided-{shots}shot-s{seed}"}]
            ),
            "spec.matrix",
            {"shots": [16], "seeds": [123456789012345]},
        ),
        "spec",
        "becomes 'eurosat-rg-guided-16shot-s123456789012345' at 16 shots, seed 123456789012345",
    ),
    (
        "held-out-validation-at-one-shot",
        with_(
            with_(
                few_shot(), "spec.matrix", {"shots": [1, 4], "variants": [{"name": "c", "method": "coop"}]}
            ),
            "spec.method",
            {"coop": {"selection": "best-validation"}},
        ),
        "spec",
        "matrix.variants[c]: selection best-validation needs data.validation",
    ),
]


@pytest.mark.parametrize(("resource", "path", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_resource_names_the_field(resource: dict[str, Any], path: str, words: str) -> None:
    problems = validate_resource(resource)
    assert problems, "expected the resource to be rejected"
    rendered = [str(p) for p in problems]
    assert any(p.path.startswith(path) and words in p.message for p in problems), rendered


def test_the_invalid_table_is_large_enough() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["spec"]["generator"].update(steps=10), "spec.generator"),
        (lambda d: d["spec"].update(sharding={"shards": 8}), "spec.sharding.shards"),
        (lambda d: d["spec"]["output"].update(uri="s3://bucket/other/"), "spec.output"),
        (lambda d: d["spec"].update(realGuidance={"source": {"uri": "s3://bucket/r/"}}), "spec.realGuidance"),
    ],
    ids=["generator", "shards", "output", "added-real-guidance"],
)
def test_immutable_fields_are_rejected_on_update(change: Any, field: str) -> None:
    old = dataset()
    new = copy.deepcopy(old)
    change(new)
    problems = validate_resource(new, old)
    assert any(p.path == field and "immutable" in p.message for p in problems), [str(p) for p in problems]


def test_mutable_fields_may_change_on_update() -> None:
    old = dataset(sharding={"shards": 8, "parallelism": 2})
    new = copy.deepcopy(old)
    new["spec"]["sharding"]["parallelism"] = 8
    new["spec"]["runPolicy"] = {"suspend": True}
    assert validate_resource(new, old) == []


def test_pydantic_enforces_the_same_cel_rules() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must not exceed sharding\.shards"):
        api.Sharding.model_validate({"shards": 2, "parallelism": 3})


def test_cli_prints_field_paths_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump_all([dataset(), with_(dataset(), "spec.sharding", {"shards": 2, "parallelism": 3})])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "document 1 (SyntheticDataset/ds): valid" in proc.stdout
    assert "document 2 (SyntheticDataset/ds): spec.sharding.parallelism" in proc.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "no resources"), ("- a\n- b\n", "expected a mapping"), ("a: [\n", "not valid YAML")],
    ids=["empty", "list", "broken-yaml"],
)
def test_unusable_files_get_a_clear_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert words in proc.stderr
