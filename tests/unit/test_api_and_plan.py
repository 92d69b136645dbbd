"""The API models, conditions -> phase, and the pure planner shared by the operator and local mode."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from synthrec import api, contract, plan
from synthrec.api import conditions
from synthrec.plan.tasks import ResourceRef, dump_task, load_task
from synthrec.timestamps import utc_stamp


def dataset_spec(**over: object) -> api.SyntheticDatasetSpec:
    body = {
        "labels": {"preset": "eurosat"},
        "generator": {"model": "hf://org/m"},
        "output": {"uri": "s3://bkt/ds/"},
    }
    body.update(over)
    return api.SyntheticDatasetSpec.model_validate(body)


def experiment_spec(**over: object) -> api.RecognitionExperimentSpec:
    body = {
        "labels": {"preset": "eurosat"},
        "data": {
            "synthetic": [{"datasetRef": "ds"}],
            "realTrain": {"uri": "s3://bkt/train/"},
            "test": {"uri": "s3://bkt/test/"},
        },
        "output": {"uri": "s3://bkt/exp/"},
    }
    body.update(over)
    return api.RecognitionExperimentSpec.model_validate(body)


# ------------------------------------------------------------------------------------------- API


def test_defaults_are_the_papers_values() -> None:
    spec = dataset_spec()
    assert spec.generator.guidance_scale == 3.0 and spec.generator.images_per_prompt == 10
    assert spec.generator.resolution == 256
    assert spec.prompts.sentences_per_class == 200 and spec.prompts.oversample == 50
    assert spec.prompts.model == "hf://mrm8488/t5-base-finetuned-common_gen"
    assert spec.prompts.decoding.do_sample and spec.prompts.decoding.top_k == 50
    assert spec.filter.clip.model == "RN50" and spec.filter.clip.pretrained == "openai"
    assert (
        spec.filter.threshold is None
        and spec.filter.keep_per_class == 800
        and spec.filter.selection == "random"
    )
    # one soft-target temperature, the experiment's (the dataset's used to be recorded, never used)
    assert "soft_target_temperature" not in type(spec.filter).model_fields
    ct = experiment_spec().method.classifier_tuning
    assert (ct.epochs, ct.weight_decay, ct.warmup_steps, ct.grad_clip) == (30, 0.1, 0, 1.0)
    assert (ct.batch_size_real, ct.batch_size_synthetic) == (32, 512)
    assert (ct.soft_target.weight, ct.soft_target.temperature) == (0.5, 2.0)
    assert ct.soft_target.pseudo_labels == "soft" and ct.selection == "last"
    assert ct.mixing == "mixed" and ct.freeze_batch_norm and ct.trainable_scope == "head"


def test_wire_format_is_camel_case_and_round_trips() -> None:
    spec = dataset_spec(sharding={"shards": 4, "maxFailedShards": 1})
    wire = spec.wire()
    assert wire["sharding"]["maxFailedShards"] == 1 and "max_failed_shards" not in wire["sharding"]
    assert api.SyntheticDatasetSpec.model_validate(wire) == spec


def test_preset_aliases_resolve_to_canonical_names() -> None:
    assert dataset_spec(labels={"preset": "imagenet"}).labels.preset == "imagenet1k"


def test_explicit_classes_with_awkward_names_are_data() -> None:
    names = ['a "quoted" cat', "a/b", "..", "café ☕", "x" * 300]
    spec = dataset_spec(labels={"classes": [{"name": n} for n in names]})
    assert [c.name for c in spec.labels.classes] == names


# -------------------------------------------------------------------------------------- conditions


def test_phase_is_derived_from_conditions_in_one_place() -> None:
    conds: list = []
    assert conditions.derive_phase(conds) == "Pending"
    conds = conditions.set_condition(conds, "Queued", True, "WaitingForQuota", generation=1)
    assert conditions.derive_phase(conds) == "Queued"
    conds = conditions.set_condition(conds, "Running", True, "ShardsRunning", generation=1)
    assert conditions.derive_phase(conds) == "Running"
    conds = conditions.set_condition(conds, "Suspended", True, "UserSuspended", generation=2)
    assert conditions.derive_phase(conds) == "Suspended"
    conds = conditions.set_condition(conds, "Complete", True, "AllShardsSucceeded", generation=2)
    assert conditions.derive_phase(conds) == "Succeeded"
    conds = conditions.set_condition(conds, "Failed", True, "DeadlineExceeded", generation=2)
    assert conditions.derive_phase(conds) == "Failed"
    assert not conditions.is_true(conds, "Complete"), "exactly one terminal condition is True"


def test_transition_time_changes_only_with_status() -> None:
    a = conditions.set_condition([], "Running", True, "A", now="2026-01-01T00:00:00Z")
    b = conditions.set_condition(a, "Running", True, "B", "new message", now="2026-01-02T00:00:00Z")
    assert b[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and b[0]["reason"] == "B"
    c = conditions.set_condition(b, "Running", False, "Done", now="2026-01-03T00:00:00Z")
    assert c[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    api.Condition.model_validate(c[0])


# ------------------------------------------------------------------------------------------ planning


def test_stage_hashes_are_chained() -> None:
    base = plan.dataset_hashes(dataset_spec())
    other_filter = plan.dataset_hashes(dataset_spec(filter={"keepPerClass": 10}))
    assert other_filter["generate"] == base["generate"] and other_filter["filter"] != base["filter"]
    other_gen = plan.dataset_hashes(dataset_spec(generator={"model": "hf://org/m", "steps": 10}))
    assert other_gen["prompts"] == base["prompts"]
    assert other_gen["generate"] != base["generate"] and other_gen["filter"] != base["filter"]
    assert plan.dataset_hashes(dataset_spec()) == base, "hashes are deterministic"
    # Mutable knobs (parallelism, resources) never invalidate artifacts.
    assert plan.dataset_hashes(dataset_spec(sharding={"shards": 1}, resources={"gpus": 2})) == base


def test_dataset_stages_in_dependency_order() -> None:
    stages = plan.dataset_stages(dataset_spec(sharding={"shards": 8}, filter={"enabled": False}))
    assert [(s.stage, s.shards, s.enabled) for s in stages] == [
        ("prompts", 1, True),
        ("generate", 8, True),
        ("filter", 8, False),
        ("reduce", 1, True),
    ]


def test_matrix_expands_into_runs_with_resolved_learning_rates() -> None:
    spec = experiment_spec(
        matrix={
            "shots": [0, 16],
            "seeds": [1, 2],
            "variants": [
                {"name": "ct-init", "synthetic": []},
                {"name": "fast", "classifierTuning": {"epochs": 3}},
            ],
        }
    )
    runs = plan.experiment_runs(spec)
    assert len(runs) == 8
    assert [r.index for r in runs] == list(range(8))
    first = runs[0]
    assert (first.name, first.shots, first.seed, first.variant, first.synthetic) == (
        "shots0-seed1-ct-init",
        0,
        1,
        "ct-init",
        [],
    )
    lrs = (first.classifier_tuning.lr, runs[-1].classifier_tuning.lr)
    assert lrs == (plan.ZERO_SHOT_LR, plan.FEW_SHOT_LR)
    fast = [r for r in runs if r.variant == "fast"]
    assert all(r.classifier_tuning.epochs == 3 and r.synthetic[0].dataset_ref == "ds" for r in fast)
    assert len({r.name for r in runs}) == 8


FIGURE1_VARIANTS = [
    {"name": "zero-shot", "method": "zero-shot"},
    {"name": "ct-init", "synthetic": []},
    {"name": "ct-syn"},
    {"name": "tip-adapter", "method": "tip-adapter"},
    {"name": "tip-adapter-f", "method": "tip-adapter-f"},
    {"name": "coop", "method": "coop"},
]


def figure1_spec(preset: str = "eurosat", **matrix: object) -> api.RecognitionExperimentSpec:
    return experiment_spec(
        labels={"preset": preset},
        data={
            "synthetic": [{"datasetRef": "rg-{shots}shot-seed{seed}"}],
            "realTrain": {"uri": "s3://bkt/train/"},
            "test": {"uri": "s3://bkt/test/"},
        },
        matrix={"shots": [1, 2, 4, 8, 16], "seeds": [1, 2, 3], "variants": FIGURE1_VARIANTS, **matrix},
    )


def test_one_experiment_expands_into_figure_1() -> None:
    runs = plan.experiment_runs(figure1_spec())
    # zero-shot CLIP has no training data: one run, at 0 shots and the first seed
    assert [(r.name, r.method) for r in runs[:7]] == [
        ("shots0-seed1-zero-shot", "zero-shot"),
        ("shots1-seed1-ct-init", "classifier-tuning"),
        ("shots1-seed1-ct-syn", "classifier-tuning"),
        ("shots1-seed1-tip-adapter", "tip-adapter"),
        ("shots1-seed1-tip-adapter-f", "tip-adapter-f"),
        ("shots1-seed1-coop", "coop"),
        ("shots1-seed2-ct-init", "classifier-tuning"),
    ]
    assert len(runs) == 1 + 5 * 3 * 5 and [r.index for r in runs] == list(range(76))
    # each cell's synthetic data is its own: Real Guidance from the run's shots, at their noise level
    syn = {(r.shots, r.seed): [s.dataset_ref for s in r.synthetic] for r in runs if r.variant == "ct-syn"}
    assert syn[(16, 3)] == ["rg-16shot-seed3"] and syn[(1, 1)] == ["rg-1shot-seed1"]
    assert all(not r.synthetic for r in runs if r.variant != "ct-syn")  # the baselines use real shots only
    assert plan.referenced_datasets(figure1_spec()) == [
        f"rg-{n}shot-seed{s}" for n in (1, 2, 4, 8, 16) for s in (1, 2, 3)
    ]
    by = {(r.variant, r.shots): r for r in runs if r.seed == 1}
    # the official defaults, filled once: Tip-Adapter's EuroSAT config, CoOp's epochs for the shots
    tip = by[("tip-adapter-f", 4)].tip_adapter
    assert (tip.alpha, tip.beta, tip.search_scale, tip.epochs, tip.augment_views) == (
        2.0,
        1.0,
        [12.0, 10.0],
        100,
        10,
    )
    assert (tip.lr, tip.eps, tip.weight_decay, tip.batch_size, tip.search_steps) == (
        1e-3,
        1e-4,
        0.01,
        256,
        [200, 20],
    )
    assert [by[("coop", n)].coop.epochs for n in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    coop = by[("coop", 16)].coop
    assert (coop.context_tokens, coop.class_token_position, coop.class_specific, coop.context_init) == (
        16,
        "end",
        False,
        None,
    )
    assert (coop.lr, coop.momentum, coop.weight_decay, coop.batch_size, coop.warmup_lr) == (
        2e-3,
        0.9,
        5e-4,
        32,
        1e-5,
    )
    assert by[("ct-syn", 1)].coop is None and by[("ct-syn", 1)].tip_adapter is None
    # other datasets' configs; an explicit value and a variant's override win
    sun = {r.variant: r for r in plan.experiment_runs(figure1_spec("sun397")) if r.shots == 2 and r.seed == 1}
    assert (sun["tip-adapter"].tip_adapter.alpha, sun["tip-adapter"].tip_adapter.epochs) == (1.17, 20)
    imagenet = [r for r in plan.experiment_runs(figure1_spec("imagenet")) if r.method == "coop"]
    assert {r.coop.epochs for r in imagenet} == {50}
    variants = [
        *FIGURE1_VARIANTS[:3],
        {"name": "coop", "method": "coop", "coop": {"epochs": 7}, "shots": [16]},
    ]
    custom = plan.experiment_runs(figure1_spec(variants=variants))
    assert [r.coop.epochs for r in custom if r.method == "coop"] == [7, 7, 7]  # only at 16 shots


def test_variants_pick_cells_of_the_matrix() -> None:
    spec = figure1_spec(variants=[{"name": "a", "shots": [2, 8], "seeds": [3]}, {"name": "b"}])
    runs = plan.experiment_runs(spec)
    assert [r.name for r in runs if r.variant == "a"] == ["shots2-seed3-a", "shots8-seed3-a"]
    assert len([r for r in runs if r.variant == "b"]) == 15


def test_the_baselines_hash_their_own_settings() -> None:
    from synthrec.plan.tasks import DatasetInput

    def hashes(**method: object) -> dict[str, str]:
        spec = figure1_spec(shots=[4], seeds=[1])
        spec = spec.model_copy(update={"method": api.Method.model_validate(method)})
        inputs = {
            r.name: [DatasetInput(uri="s3://bkt/rg/", digest="d")] if r.synthetic else []
            for r in plan.experiment_runs(spec)
        }
        return {r.variant: plan.run_hash(spec, r, inputs[r.name]) for r in plan.experiment_runs(spec)}

    base = hashes()
    longer_ct = hashes(classifierTuning={"epochs": 5})
    assert {v for v in base if base[v] != longer_ct[v]} == {"ct-init", "ct-syn"}
    longer_coop = hashes(coop={"epochs": 5})
    assert {v for v in base if base[v] != longer_coop[v]} == {"coop"}
    tip = hashes(tipAdapter={"alpha": 3.0})
    assert {v for v in base if base[v] != tip[v]} == {"tip-adapter", "tip-adapter-f"}
    hard = hashes(classifierTuning={"softTarget": {"pseudoLabels": "hard"}})
    assert {v for v in base if base[v] != hard[v]} == {"ct-init", "ct-syn"}


def test_a_run_reports_its_methods_selection() -> None:
    spec = figure1_spec(shots=[4], seeds=[1])
    spec = spec.model_copy(
        update={"method": api.Method.model_validate({"coop": {"selection": "best-validation"}})}
    )
    selections = {r.variant: r.selection() for r in plan.experiment_runs(spec)}
    assert selections == {
        "zero-shot": "last",
        "ct-init": "last",
        "ct-syn": "last",
        "tip-adapter": "last",
        "tip-adapter-f": "last",
        "coop": "best-validation",
    }


def test_tasks_round_trip_and_map_completion_indexes(tmp_path: Path) -> None:
    spec = dataset_spec(sharding={"shards": 6})
    ref = ResourceRef(kind="SyntheticDataset", name="ds", namespace="team-a")
    task = plan.dataset_task(spec, "generate", ref, attempt=2, shard_ids=[1, 4])
    path = tmp_path / "task.json"
    path.write_text(dump_task(task))
    loaded = load_task(path)
    assert loaded == task and loaded.stage == "generate"
    assert [loaded.shard_for_index(i) for i in range(2)] == [1, 4]
    assert loaded.attempt_size() == 2
    with pytest.raises(IndexError):
        loaded.shard_for_index(2)


def test_train_task_carries_the_run(tmp_path: Path) -> None:
    spec = experiment_spec(matrix={"shots": [4], "seeds": [7]})
    run = plan.experiment_runs(spec)[0]
    from synthrec.plan.tasks import DatasetInput

    inputs = [DatasetInput(name="ds", uri="s3://bkt/ds/", digest="abc")]
    task = plan.train_task(spec, run, inputs, ResourceRef(kind="RecognitionExperiment", name="e"))
    other = plan.train_task(
        spec, run, [DatasetInput(name="ds", uri="s3://bkt/ds/", digest="def")], task.resource
    )
    assert task.spec_hash != other.spec_hash, "a new dataset digest means a new run"
    path = tmp_path / "t.json"
    path.write_text(dump_task(task))
    assert load_task(path).run.shots == 4


def test_defaults_are_filled_once_when_the_plan_is_made_and_the_task_carries_one_learning_rate() -> None:
    spec = experiment_spec(
        matrix={
            "shots": [0, 4],
            "seeds": [1],
            "variants": [{"name": "a"}, {"name": "b", "classifierTuning": {"lr": 0.01}}],
        }
    )
    assert spec.method.classifier_tuning.lr is None  # the spec says nothing: the paper's default applies
    runs = {r.name: r for r in plan.experiment_runs(spec)}
    assert runs["shots0-seed1-a"].classifier_tuning.lr == plan.ZERO_SHOT_LR
    assert runs["shots4-seed1-a"].classifier_tuning.lr == plan.FEW_SHOT_LR
    assert runs["shots4-seed1-b"].classifier_tuning.lr == 0.01  # the variant's own value wins
    from synthrec.plan.tasks import DatasetInput

    inputs = [DatasetInput(name="ds", uri="s3://bkt/ds/", digest="abc")]
    task = plan.train_task(
        spec, runs["shots4-seed1-a"], inputs, ResourceRef(kind="RecognitionExperiment", name="e")
    )
    document = json.loads(dump_task(task))
    assert document["experiment"] == json.loads(spec.model_dump_json())  # the spec as written, for spec.json
    del document["experiment"]
    rates = re.findall(r'"lr": ([^,}]+)', json.dumps(document))
    assert rates == ["0.001"]  # one learning rate besides the spec: the one the optimiser gets
    # filling the default in the plan moved no hash (recorded at HASH_VERSION 2): outputs stay valid
    hashes = {name: plan.run_hash(spec, run, inputs) for name, run in runs.items()}
    assert hashes == {
        "shots0-seed1-a": "bb0fbbb06a5a85067930b6b7d5b739ddac542c9b44d3d982924c678005a93660",
        "shots0-seed1-b": "78ff690a6ff7c958c124ab1af29ad97fcf2cfeb7a5f953ca444c45bcd5e601a0",
        "shots4-seed1-a": "0205bfd90c529961d0808d1122f6a414d987ba7c5195ce53233a32b0a3526d2a",
        "shots4-seed1-b": "2569c5ff1a262e01e850059ffe313c036a43d848381cca99af51558bdb2ec480",
    }


def test_bad_task_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read task file"):
        load_task(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_task(bad)


@pytest.mark.parametrize(
    ("values", "text"), [([], ""), ([3], "3"), ([0, 1, 2, 3, 5], "0-3,5"), ([7, 1, 2, 9, 8], "1-2,7-9")]
)
def test_range_strings_match_job_status_format(values: list[int], text: str) -> None:
    assert plan.format_ranges(values) == text
    assert plan.parse_ranges(text) == set(values)


def test_termination_summary_fits_the_kubelet_limit() -> None:
    huge = contract.FailureSummary(stage="generate", shard=3, error="data", message="x" * 10_000)
    line = contract.summary_line(huge)
    assert len(line.encode()) <= contract.TERMINATION_LOG_LIMIT
    parsed = contract.parse_summary(line)
    assert isinstance(parsed, contract.FailureSummary) and parsed.shard == 3 and parsed.error == "data"
    assert parsed.message.startswith("xxx") and len(parsed.message) < 10_000
    long_uri = contract.ReduceSummary(
        generated=9, passed=5, kept=4, rejected=5, manifest="s3://b/" + "k" * 9000
    )
    assert contract.parse_summary(contract.summary_line(long_uri)).kept == 4  # counts survive the trimming


def test_termination_summaries_are_typed_per_stage() -> None:
    line = contract.summary_line(
        contract.GenerateSummary(shard=2, images=12, tar="s3://b/shards/gen-00002.tar")
    )
    assert json.loads(line) == {
        "version": 1,
        "stage": "generate",
        "shard": 2,
        "ok": True,
        "skipped": False,
        "images": 12,
        "tar": "s3://b/shards/gen-00002.tar",
        "seconds_model": 0.0,
        "real_skipped": 0,
    }
    assert contract.parse_summary(line) == contract.GenerateSummary(
        shard=2, images=12, tar="s3://b/shards/gen-00002.tar"
    )
    assert contract.parse_summary("not json") is None
    assert (
        contract.parse_summary('{"stage": "generate", "ok": true}') is None
    )  # no count: not a summary of ours
    assert contract.parse_summary('{"stage": "unknown", "ok": true}') is None
    newer = json.loads(line) | {"version": 2}
    assert contract.parse_summary(json.dumps(newer)) is None  # a version this operator does not know


def test_timestamps_are_utc_whole_seconds_with_z_as_kubernetes_writes_them() -> None:
    berlin = datetime(2026, 3, 1, 12, 30, 5, 999_999, tzinfo=timezone(timedelta(hours=1)))
    assert utc_stamp(berlin) == "2026-03-01T11:30:05Z"
    assert utc_stamp().endswith("Z") and len(utc_stamp()) == len("2026-03-01T11:30:05Z")
