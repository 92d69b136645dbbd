"""The generate stage with the tiny Stable Diffusion model: WebDataset shards on file:// and on S3 (moto),
resumability after SIGKILL, the no-op re-run, Real Guidance, transient S3 failures and bad input.

Stages run both in-process (``run_stage`` with a task file, as the CLI does) and as real subprocesses
(``python -m synthrec.workers generate --task ... --shard N``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthrec.api import SyntheticDatasetSpec
from synthrec.api.labels import resolve_labels
from synthrec.contract import ENV_PROGRESS_FILE, ENV_TERMINATION_LOG, parse_summary
from synthrec.plan import dataset_hashes, dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import open_storage
from synthrec.tiny import TinyModels
from synthrec.workers import generate, prompts
from synthrec.workers.runtime import run_stage

pytestmark = pytest.mark.slow

STAGES = {"prompts": prompts.run, "generate": generate.run}
RESOURCE = ResourceRef(kind="SyntheticDataset", name="tiny-gen")
KEY = re.compile(r"^c\d{5}-p\d{5}-i\d{5}$")
BLOCK_HEAVY = (
    "import sys\n"
    "for name in ('torch', 'diffusers', 'transformers', 'numpy'):\n"
    "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
    "from synthrec.workers.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


# ------------------------------------------------------------------------------------------ helpers


def make_spec(tiny: TinyModels, out: str, **overrides: Any) -> SyntheticDatasetSpec:
    doc: dict[str, Any] = {
        "labels": {"preset": "tiny"},
        "prompts": {"templates": ["a photo of a {}.", "a drawing of a {}."]},
        "generator": {
            "model": tiny.sd.as_uri(),
            "steps": 2,
            "resolution": 64,
            "imagesPerPrompt": 3,
            "batchSize": 4,
        },
        "sharding": {"shards": 2},
        "output": {"uri": out},
    }
    for key, value in overrides.items():
        if key == "generator":  # generator settings add to the defaults above; the rest replaces
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return SyntheticDatasetSpec.model_validate(doc)


def write_task(spec: SyntheticDatasetSpec, stage: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}-{dataset_hashes(spec)[stage][:8]}.json"
    path.write_text(dump_task(dataset_task(spec, stage, RESOURCE)))
    return path


def run_in_process(stage: str, task: Path, shard: int | None = None) -> tuple[int, dict[str, Any]]:
    """One stage under the worker contract, in this process; returns the exit code and the summary."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = run_stage(stage, STAGES[stage], str(task), shard)
    finally:
        signal.signal(signal.SIGTERM, previous)  # run_stage installs its own handler
    summary = parse_summary(Path(os.environ[ENV_TERMINATION_LOG]).read_text())
    assert summary is not None
    return code, summary


def run_both(spec: SyntheticDatasetSpec, folder: Path, shards: list[int]) -> list[dict[str, Any]]:
    code, _ = run_in_process("prompts", write_task(spec, "prompts", folder))
    assert code == 0
    task = write_task(spec, "generate", folder)
    results = []
    for shard in shards:
        code, summary = run_in_process("generate", task, shard)
        assert code == 0, summary
        results.append(summary)
    return results


def read_samples(tar_bytes: bytes) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(key, jpg bytes, json) per sample, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [(k, v["jpg"], json.loads(v["json"])) for k, v in samples.items()]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, here and in worker subprocesses (OMP_NUM_THREADS). On a busy shared CPU the
    tiny model runs up to 20x slower on two threads than on one (OpenMP barriers stall whenever a vCPU is
    taken away), and the same thread count keeps subprocess images bit-identical to in-process ones."""
    import torch

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(path))
    return path


def worker_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({ENV_TERMINATION_LOG: str(tmp / "subprocess-termination-log"), "TMPDIR": str(tmp), **extra})
    return env


# ---------------------------------------------------------------------- one generated dataset, shared


@pytest.fixture(scope="module")
def basic_dataset(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Prompts plus both generate shards of the basic spec, on file:// (24 images: 4 classes x 2 x 3)."""
    root = tmp_path_factory.mktemp("basic-dataset")
    out = root / "out"
    spec = make_spec(tiny_models, out.as_uri() + "/")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv(ENV_TERMINATION_LOG, str(root / "termination-log"))
        summaries = run_both(spec, root / "tasks", [0, 1])
    return {"spec": spec, "out": out, "summaries": summaries, "root": root}


def test_each_shard_is_a_webdataset_with_every_field(basic_dataset: dict[str, Any]) -> None:
    import webdataset as wds

    spec, out = basic_dataset["spec"], basic_dataset["out"]
    labels = resolve_labels(spec.labels)
    items: list[int] = []
    for shard, summary in enumerate(basic_dataset["summaries"]):
        tar = out / "shards" / f"gen-{shard:05d}.tar"
        marker = json.loads((out / "shards" / f"gen-{shard:05d}.done.json").read_text())
        assert summary.images == marker["count"] == 12
        assert summary.sha256 == marker["sha256"]
        assert marker["spec_hash"] == dataset_hashes(spec)["generate"]
        assert summary.tar == tar.as_uri()
        assert summary.seconds_model > 0 and 0 < summary.model_busy <= 1
        samples = list(wds.WebDataset(str(tar), shardshuffle=False).decode("pil"))
        assert len(samples) == 12
        for sample in samples:
            assert KEY.match(sample["__key__"])
            assert sample["jpg"].size == (64, 64) and sample["jpg"].mode == "RGB"
            meta = sample["json"]
            assert meta["class_name"] == labels.classes[meta["class"]].name
            assert sample["cls"] == meta["class"]  # the webdataset library decodes .cls to an int
            assert meta["prompt"] in (
                f"a photo of a {meta['class_name']}.",
                f"a drawing of a {meta['class_name']}.",
            )
            assert meta["real_source"] is None and meta["strength"] is None
            assert meta["model"] == spec.generator.model and meta["revision"] is None
            assert (meta["steps"], meta["guidance"], meta["resolution"]) == (2, 3.0, 64)
            assert meta["generation_resolution"] == 64  # the tiny SD's native size: unet 32 x VAE factor 2
            assert isinstance(meta["seed"], int)
            items.append(meta["item"])
    assert sorted(items) == list(range(24))  # the shards split the items, each exactly once
    seeds = [
        s[2]["seed"]
        for shard in (0, 1)
        for s in read_samples((out / f"shards/gen-{shard:05d}.tar").read_bytes())
    ]
    assert len(set(seeds)) == 24


@pytest.mark.parametrize(
    ("generator", "generated", "stored"),
    [({"resolution": 96}, 64, 96), ({"resolution": 64, "generationResolution": 128}, 128, 64)],
    ids=["native-size-stored-larger", "explicit-size-stored-smaller"],
)
def test_images_are_generated_at_the_pipelines_size_and_stored_at_the_resolution(
    tiny_models: TinyModels,
    tmp_path: Path,
    termination_log: Path,
    monkeypatch: pytest.MonkeyPatch,
    generator: dict[str, Any],
    generated: int,
    stored: int,
) -> None:
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    sizes: list[tuple[int, int]] = []
    original = StableDiffusionPipeline.__call__

    def recording_call(self: Any, *args: Any, **kwargs: Any) -> Any:  # a spy: the real pipeline still runs
        out = original(self, *args, **kwargs)
        sizes.extend(tuple(image.shape[-2:]) for image in out.images)  # CHW tensors on the device
        return out

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", recording_call)
    spec = make_spec(
        tiny_models,
        (tmp_path / "out").as_uri() + "/",
        generator=generator,
        sharding={"shards": 1},
        labels={"preset": "tiny", "subset": ["red circle"]},
    )
    run_both(spec, tmp_path / "tasks", [0])
    assert sizes and set(sizes) == {(generated, generated)}
    samples = read_samples((tmp_path / "out" / "shards" / "gen-00000.tar").read_bytes())
    for _, jpg, meta in samples:
        assert Image.open(io.BytesIO(jpg)).size == (stored, stored)
        assert (meta["generation_resolution"], meta["resolution"]) == (generated, stored)


def test_a_finished_shard_reruns_as_a_noop_without_importing_torch(
    basic_dataset: dict[str, Any], tmp_path: Path
) -> None:
    task = write_task(basic_dataset["spec"], "generate", tmp_path)
    tar = basic_dataset["out"] / "shards" / "gen-00001.tar"
    before = tar.stat().st_mtime_ns, tar.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY, "generate", "--task", str(task), "--shard", "1"],
        env=worker_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr  # torch/diffusers/numpy cannot be imported: no model loaded
    summary = parse_summary((tmp_path / "subprocess-termination-log").read_text())
    assert summary.skipped is True and summary.images == 12
    assert (tar.stat().st_mtime_ns, tar.read_bytes()) == before


def test_an_empty_shard_commits_an_empty_tar_without_loading_a_model(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path
) -> None:
    spec = make_spec(
        tiny_models,
        (tmp_path / "out").as_uri() + "/",
        labels={"classes": [{"name": "only"}]},
        prompts={"templates": ["{}"]},
        generator={"imagesPerPrompt": 1},
        sharding={"shards": 2},  # one item for two shards: shard 0 gets none
    )
    assert run_in_process("prompts", write_task(spec, "prompts", tmp_path))[0] == 0
    task = write_task(spec, "generate", tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY, "generate", "--task", str(task), "--shard", "0"],
        env=worker_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = parse_summary((tmp_path / "subprocess-termination-log").read_text())
    assert (summary.images, summary.skipped, summary.device) == (0, False, None)
    with tarfile.open(tmp_path / "out" / "shards" / "gen-00000.tar") as tar:
        assert tar.getmembers() == []
    marker = json.loads((tmp_path / "out" / "shards" / "gen-00000.done.json").read_text())
    assert marker["count"] == 0 and marker["sha256"] == summary.sha256


def test_transient_s3_failures_are_survived_and_give_the_same_bytes(
    tiny_models: TinyModels,
    basic_dataset: dict[str, Any],
    s3_faults: Any,
    tmp_path: Path,
    termination_log: Path,
) -> None:
    spec = make_spec(tiny_models, s3_faults.uri + "ds/")
    assert dataset_hashes(spec) == dataset_hashes(basic_dataset["spec"])  # the output URI is not hashed
    code, _ = run_in_process("prompts", write_task(spec, "prompts", tmp_path))
    assert code == 0
    put_faults = s3_faults.proxy.fail(2, status=503, code="SlowDown", method="PUT", path="/shards/")
    get_fault = s3_faults.proxy.fail(1, status=500, code="InternalError", method="GET", path="prompts.jsonl")
    code, summary = run_in_process("generate", write_task(spec, "generate", tmp_path), 0)
    assert code == 0, summary
    assert put_faults.hits == 2 and get_fault.hits == 1
    body = s3_faults.client.get_object(Bucket=s3_faults.name, Key="ds/shards/gen-00000.tar")["Body"].read()
    assert body == (basic_dataset["out"] / "shards" / "gen-00000.tar").read_bytes()
    marker = json.loads(
        s3_faults.client.get_object(Bucket=s3_faults.name, Key="ds/shards/gen-00000.done.json")["Body"].read()
    )
    assert marker["count"] == 12 and marker["sha256"] == summary.sha256


# ------------------------------------------------------------------------------- SIGKILL and resume


def test_a_shard_killed_midway_reruns_to_the_same_bytes_and_one_marker(
    tiny_models: TinyModels, s3_bucket: Any, tmp_path: Path, termination_log: Path
) -> None:
    overrides = {"generator": {"batchSize": 1}}  # 12 calls for the 12 images of shard 0
    # The reference: the same spec run without interruption into another (file://) output.
    reference = make_spec(tiny_models, (tmp_path / "reference").as_uri() + "/", **overrides)
    (summary,) = run_both(reference, tmp_path / "ref-tasks", [0])
    assert summary.images == 12

    spec = make_spec(tiny_models, s3_bucket.uri + "killed/", **overrides)
    code, _ = run_in_process("prompts", write_task(spec, "prompts", tmp_path))
    assert code == 0
    task = write_task(spec, "generate", tmp_path)
    progress = tmp_path / "progress.json"
    command = [sys.executable, "-m", "synthrec.workers", "generate", "--task", str(task), "--shard", "0"]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(
            command, env=worker_env(tmp_path, **{ENV_PROGRESS_FILE: str(progress)}), stderr=log
        )
        try:
            state = _wait_for_images(progress, proc, timeout=180)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < state["done"] < state["total"] == 12, state  # killed midway, after the first images
    keys = [
        o["Key"]
        for o in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="killed/shards/").get(
            "Contents", []
        )
    ]
    assert keys == []  # nothing committed, nothing half-visible

    # The retry (in-process here, to spare a second interpreter start; it runs the same run_stage).
    code, rerun = run_in_process("generate", task, 0)
    assert code == 0 and rerun.skipped is False, rerun
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="killed/shards/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "killed/shards/gen-00000.done.json",
        "killed/shards/gen-00000.tar",
    ]
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="killed/shards/gen-00000.tar")[
        "Body"
    ].read()
    assert body == (tmp_path / "reference" / "shards" / "gen-00000.tar").read_bytes()


def _wait_for_images(progress: Path, proc: subprocess.Popen[bytes], *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited early with {proc.returncode}"
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("done", 0) > 0:
            return state
        time.sleep(0.02)
    raise AssertionError(f"no image was produced within {timeout} s")


# ---------------------------------------------------------------------------------- Real Guidance


def rg_spec(tiny: TinyModels, out: Path, real: Path, **rg: Any) -> SyntheticDatasetSpec:
    return make_spec(
        tiny,
        out.as_uri() + "/",
        prompts={"templates": ["a photo of a {}."]},
        generator={"steps": 4, "batchSize": 3},
        sharding={"shards": 1},
        realGuidance={"source": {"uri": real.as_uri() + "/"}, "shots": 2, "imagesPerClass": 4, **rg},
    )


def sampled_shots(spec: SyntheticDatasetSpec) -> dict[int, list[str]]:
    from synthrec.workers.realdata import index_real_data, sample_shots

    rg = spec.real_guidance
    index = index_real_data(rg.source, resolve_labels(spec.labels), lambda uri: open_storage(uri))
    return {c: [img.uri for img in imgs] for c, imgs in sample_shots(index, rg.shots, rg.seed).items()}


def paper_matched_strength(tiny: TinyModels, shots: int, steps: int) -> tuple[float, float]:
    """The strength (k / steps) whose img2img start on the tiny SD's own scheduler is closest to the paper's
    level for ``shots``, computed here from diffusers directly: alphas_cumprod at timesteps[steps - k]."""
    from diffusers import DDIMScheduler

    from synthrec.noise_levels import paper_alpha_bar

    scheduler = DDIMScheduler.from_pretrained(str(tiny.sd), subfolder="scheduler")
    scheduler.set_timesteps(steps)
    levels = {k: float(scheduler.alphas_cumprod[scheduler.timesteps[steps - k]]) for k in range(1, steps + 1)}
    k = min(levels, key=lambda k: abs(levels[k] - paper_alpha_bar(shots)))
    return k / steps, levels[k]


@pytest.mark.parametrize("strength", [None, 0.75], ids=["paper-level-2-shots", "explicit"])
def test_real_guidance_starts_from_exactly_the_sampled_shots_at_the_configured_strength(
    tiny_models: TinyModels,
    tmp_path: Path,
    termination_log: Path,
    monkeypatch: pytest.MonkeyPatch,
    strength: float | None,
) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    from synthrec.workers.diffusion import center_square
    from synthrec.workers.realdata import RealImage, load_rgb

    calls: list[dict[str, Any]] = []
    original = StableDiffusionImg2ImgPipeline.__call__

    def recording_call(self: Any, *args: Any, **kwargs: Any) -> Any:  # a spy: the real pipeline still runs
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", recording_call)
    extra = {"strength": strength} if strength is not None else {}
    spec = rg_spec(tiny_models, tmp_path / "out", tiny_models.real / "train", **extra)
    (summary,) = run_both(spec, tmp_path / "tasks", [0])
    assert summary.images == 16 and summary.real_skipped == 0

    expected, level = paper_matched_strength(tiny_models, 2, 4) if strength is None else (0.75, None)
    assert calls and {c["strength"] for c in calls} == {expected}
    marker = json.loads((tmp_path / "out" / "shards" / "gen-00000.done.json").read_text())
    record = marker["real_guidance"]
    assert record["strength"] == expected and record["steps_run"] == round(expected * 4)
    assert record["strength_source"] == ("matched" if strength is None else "explicit")
    if level is not None:
        assert record["alpha_bar"] == pytest.approx(level, abs=1e-6)
        assert record["target_alpha_bar"] == pytest.approx(0.655, abs=5e-4)  # GLIDE's level at 2 shots
    passed = [image for c in calls for image in c["image"]]
    samples = read_samples((tmp_path / "out" / "shards" / "gen-00000.tar").read_bytes())
    assert len(passed) == len(samples) == 16
    shots = sampled_shots(spec)
    for (_, _, meta), image in zip(samples, passed, strict=True):
        assert meta["strength"] == expected
        assert meta["real_source"] in shots[meta["class"]]
        source = load_rgb(RealImage(meta["class"], meta["real_source"]), lambda uri: open_storage(uri))
        assert np.array_equal(np.asarray(image), np.asarray(center_square(source, 64)))
    used = Counter((m["class"], m["real_source"]) for _, _, m in samples)
    assert set(used) == {(c, uri) for c, uris in shots.items() for uri in uris}
    assert set(used.values()) == {2}  # imagesPerClass / shots = 4 / 2 per real image


def test_an_unreadable_shot_is_replaced_by_the_next_image_or_fails_the_shard(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path
) -> None:
    real = tmp_path / "real"
    shutil.copytree(tiny_models.real / "train", real)
    first = rg_spec(tiny_models, tmp_path / "unused", real)
    broken = sampled_shots(first)[0][0]
    Path(broken.removeprefix("file://")).write_bytes(b"this is not a PNG")

    spec = rg_spec(tiny_models, tmp_path / "skip", real, imagesPerClass=2)  # one image per shot
    (summary,) = run_both(spec, tmp_path / "tasks-skip", [0])
    assert summary.images == 8 and summary.real_skipped == 1
    sources = {
        m["real_source"]
        for _, _, m in read_samples((tmp_path / "skip/shards/gen-00000.tar").read_bytes())
        if m["class"] == 0
    }
    assert broken not in sources and len(sources) == 2

    spec = rg_spec(
        tiny_models,
        tmp_path / "fail",
        real,
        imagesPerClass=2,
        source={"uri": real.as_uri() + "/", "onBadImage": "fail"},
    )
    code, _ = run_in_process("prompts", write_task(spec, "prompts", tmp_path / "tasks-fail"))
    assert code == 0
    code, summary = run_in_process("generate", write_task(spec, "generate", tmp_path / "tasks-fail"), 0)
    assert code == 42 and summary.error == "data"
    assert broken in summary.message
    assert not (tmp_path / "fail" / "shards").exists()


# ----------------------------------------------------------------------------------- batch size search


def test_the_batch_size_is_measured_by_the_first_pod_and_reused_by_the_next(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path
) -> None:
    out = tmp_path / "out"
    spec = make_spec(
        tiny_models,
        out.as_uri() + "/",
        generator={"batchSize": 4, "batchSizeSearch": True, "imagesPerPrompt": 4},  # 16 images a shard
    )
    first, second = run_both(spec, tmp_path / "tasks", [0, 1])
    assert (first.batch_size_source, second.batch_size_source) == ("searched", "stored")
    assert first.images == second.images == 16
    (record,) = [o for o in open_storage(out.as_uri() + "/").list("models/batch-size/")]
    stored = json.loads((out / record.key).read_text())
    assert set(stored["images_per_s"]) <= {"1", "2", "4"} and stored["batch_size"] in (1, 2, 4)
    assert first.batch_size == second.batch_size == stored["batch_size"]
    # every item made once, whatever batches the search ran
    items = [m["item"] for _, _, m in read_samples((out / "shards/gen-00000.tar").read_bytes())]
    assert len(items) == len(set(items)) == 16
    assert first.seconds_startup is not None and first.steady_images_per_s is not None


# ------------------------------------------------------------------------------------------ bad input


AWKWARD_NAMES = ['say "cheese"', "it's", "a/b", "..", "../../etc/passwd", "日本語の猫 ünï", "x" * 300, "{}"]


def test_awkward_class_names_stay_inside_the_json(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path
) -> None:
    spec = make_spec(
        tiny_models,
        (tmp_path / "out").as_uri() + "/",
        labels={"classes": [{"name": n} for n in AWKWARD_NAMES]},
        prompts={"templates": ["{}"]},
        generator={"imagesPerPrompt": 1, "batchSize": 8},
        sharding={"shards": 1},
    )
    (summary,) = run_both(spec, tmp_path / "tasks", [0])
    assert summary.images == len(AWKWARD_NAMES)
    with tarfile.open(tmp_path / "out" / "shards" / "gen-00000.tar") as tar:
        names = tar.getnames()
    assert all(re.fullmatch(r"c\d{5}-p00000-i00000\.(jpg|json|cls)", n) for n in names)
    samples = read_samples((tmp_path / "out" / "shards" / "gen-00000.tar").read_bytes())
    assert [m["class_name"] for _, _, m in samples] == AWKWARD_NAMES
    assert [m["prompt"] for _, _, m in samples] == AWKWARD_NAMES
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == sorted(
        ["spec.json", "prompts.jsonl", "prompts.done.json", "gen-00000.tar", "gen-00000.done.json"]
    )


@pytest.mark.parametrize(
    ("generator", "expected"),
    [
        ({"model": "file:///nonexistent/sd"}, "does not exist"),
        ({"model": "hf://nobody-here/no-such-model"}, "no-such-model"),
        ({"pipeline": "NoSuchPipeline"}, "not a diffusers pipeline class"),
        ({"scheduler": "NoSuchScheduler"}, "not a diffusers scheduler class"),
    ],
)
def test_an_unusable_model_is_a_configuration_error(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path, generator: dict[str, Any], expected: str
) -> None:
    spec = make_spec(tiny_models, (tmp_path / "out").as_uri() + "/", generator=generator)
    assert run_in_process("prompts", write_task(spec, "prompts", tmp_path))[0] == 0
    code, summary = run_in_process("generate", write_task(spec, "generate", tmp_path), 0)
    assert code == 3 and summary.error == "config", summary
    assert expected in summary.message
    assert "generator." in summary.message
    assert not (tmp_path / "out" / "shards").exists()


def test_a_folder_that_is_not_a_pipeline_is_a_configuration_error(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path
) -> None:
    spec = make_spec(
        tiny_models, (tmp_path / "out").as_uri() + "/", generator={"model": tiny_models.t5.as_uri()}
    )
    assert run_in_process("prompts", write_task(spec, "prompts", tmp_path))[0] == 0
    code, summary = run_in_process("generate", write_task(spec, "generate", tmp_path), 0)
    assert code == 3
    assert tiny_models.t5.as_uri() in summary.message and "model_index.json" in summary.message


def test_prompts_from_another_spec_are_a_data_error(
    tiny_models: TinyModels, basic_dataset: dict[str, Any], tmp_path: Path, termination_log: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("prompts.jsonl", "prompts.done.json"):
        shutil.copy(basic_dataset["out"] / name, out / name)
    other = make_spec(tiny_models, out.as_uri() + "/", prompts={"templates": ["an image of {}"]})
    code, summary = run_in_process("generate", write_task(other, "generate", tmp_path), 0)
    assert code == 42 and "prompts from another spec" in summary.message
    assert not (out / "shards").exists()


def test_a_shard_committed_by_another_spec_is_never_overwritten(
    tiny_models: TinyModels, basic_dataset: dict[str, Any], tmp_path: Path, termination_log: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(basic_dataset["out"], out)
    tar = out / "shards" / "gen-00000.tar"
    before = tar.read_bytes(), (out / "shards" / "gen-00000.done.json").read_bytes()
    other = make_spec(tiny_models, out.as_uri() + "/", generator={"steps": 3})
    assert dataset_hashes(other)["prompts"] == dataset_hashes(basic_dataset["spec"])["prompts"]
    code, summary = run_in_process("generate", write_task(other, "generate", tmp_path), 0)
    assert code == 3 and "committed by another spec" in summary.message
    assert (tar.read_bytes(), (out / "shards" / "gen-00000.done.json").read_bytes()) == before


def test_an_empty_class_list_is_a_configuration_error(
    basic_dataset: dict[str, Any], tmp_path: Path, termination_log: Path
) -> None:
    task = json.loads(write_task(basic_dataset["spec"], "generate", tmp_path).read_text())
    task["dataset"]["labels"] = {"classes": []}
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(task))
    code, summary = run_in_process("generate", path, 0)
    assert code == 3 and "classes" in summary.message


def test_real_guidance_with_less_than_one_denoising_step_is_a_configuration_error(
    tiny_models: TinyModels, tmp_path: Path, termination_log: Path
) -> None:
    spec = rg_spec(tiny_models, tmp_path / "out", tiny_models.real / "train", strength=0.3)
    spec = spec.model_copy(update={"generator": spec.generator.model_copy(update={"steps": 2})})
    assert run_in_process("prompts", write_task(spec, "prompts", tmp_path))[0] == 0
    code, summary = run_in_process("generate", write_task(spec, "generate", tmp_path), 0)
    assert code == 3 and "at least 4" in summary.message


def test_the_native_size_is_the_denoisers_sample_size_times_the_vae_factor() -> None:
    from types import SimpleNamespace

    import torch

    from synthrec.workers.diffusion import generation_size
    from synthrec.workers.runtime import ConfigError

    def config(sample_size: Any) -> Any:
        return SimpleNamespace(config=SimpleNamespace(sample_size=sample_size))

    sd21_base = SimpleNamespace(unet=config(64), vae_scale_factor=8)
    sdxl = SimpleNamespace(unet=config(128), default_sample_size=128, vae_scale_factor=8)
    pixart = SimpleNamespace(unet=None, transformer=config([64, 64]), vae_scale_factor=8)
    assert (generation_size(sd21_base), generation_size(sdxl), generation_size(pixart)) == (512, 1024, 512)
    with pytest.raises(ConfigError, match=r"set generator\.generationResolution"):
        generation_size(SimpleNamespace(unet=config(64)))  # no VAE scale factor: cannot tell

    class Denoiser(torch.nn.Module):
        config = SimpleNamespace(sample_size=64)

    compiled = torch.compile(Denoiser())  # generator.compile: the pipeline holds the compiled wrapper
    assert generation_size(SimpleNamespace(unet=compiled, vae_scale_factor=8)) == 512
