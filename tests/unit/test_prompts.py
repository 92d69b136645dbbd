"""Prompt building, work-item planning and deterministic shard bytes: the pure parts of the prompts and
generate stages (no model, no storage)."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import pytest

from synthrec.api import SyntheticDatasetSpec
from synthrec.api.labels import resolve_labels
from synthrec.workers.prompts import basic_prompts, build_prompts, fill_in, images_per_row, select_prompts
from synthrec.workers.shardio import DeterministicTar, encode_jpeg, sample_json
from synthrec.workers.workitems import (
    PromptRow,
    dump_rows,
    even_split,
    item_seed,
    parse_rows,
    shard_items,
    shard_range,
)


def spec(**overrides: object) -> SyntheticDatasetSpec:
    doc: dict[str, object] = {
        "labels": {"preset": "tiny"},
        "generator": {"model": "file:///models/sd"},
        "output": {"uri": "file:///tmp/out/"},
    }
    doc.update(overrides)
    return SyntheticDatasetSpec.model_validate(doc)


# ----------------------------------------------------------------------------------- select_prompts


def test_select_drops_exact_duplicates_and_picks_n_with_the_seed() -> None:
    candidates = ["a b", "a b", "c d", "e f", "g h", "", "  ", "c d"]
    chosen, fills = select_prompts(candidates, 3, seed=7, fallback=["basic"])
    assert fills == 0
    prompts = [p for p, _ in chosen]
    assert len(prompts) == len(set(prompts)) == 3
    assert set(prompts) <= {"a b", "c d", "e f", "g h"}
    assert {s for _, s in chosen} == {"le"}
    assert select_prompts(candidates, 3, seed=7, fallback=["basic"]) == (chosen, 0)
    others = {tuple(p for p, _ in select_prompts(candidates, 3, seed=s, fallback=[])[0]) for s in range(20)}
    assert len(others) > 1  # the seed matters


def test_too_few_unique_sentences_are_filled_and_counted_instead_of_crashing() -> None:
    chosen, fills = select_prompts(["x", "x", "y"], 6, seed=0, fallback=["basic one", "x", "basic two"])
    assert fills == 4  # 2 unique sentences for 6 prompts
    assert len(chosen) == 6
    le = [p for p, s in chosen if s == "le"]
    filled = [p for p, s in chosen if s == "fill"]
    assert sorted(le) == ["x", "y"]
    # basic prompts first (those not already present), then repeats of the kept sentences
    assert filled[:2] == ["basic one", "basic two"]
    assert set(filled[2:]) <= {"x", "y"}


def test_a_model_that_writes_nothing_usable_falls_back_to_the_basic_prompts() -> None:
    chosen, fills = select_prompts(["", " "], 3, seed=0, fallback=["a photo of a cat."])
    assert fills == 3
    assert [p for p, _ in chosen] == ["a photo of a cat."] * 3


# ------------------------------------------------------------------------------------- basic prompts


def test_basic_prompts_use_the_preset_template_and_wrapper_free_class_names() -> None:
    s = spec(labels={"preset": "eurosat"})
    labels = resolve_labels(s.labels)
    prompts = basic_prompts(s, labels, labels.classes[0].name)
    # The official Real Guidance prompt: 'a centered satellite photo of ' + name (src/glide/glide_fsl.py).
    assert prompts == ["a centered satellite photo of Annual Crop Land"]
    # ImageNet-R: one prompt per rendition type.
    r = spec(labels={"preset": "imagenet_r"})
    rendered = basic_prompts(r, resolve_labels(r.labels), "goldfish")
    assert (
        len(rendered) == 13
        and "a sketch of a goldfish." in rendered
        and "a goldfish in a video game." in rendered
    )


@pytest.mark.parametrize(
    "name",
    ['a "quoted" {name}', "slash/and\\back", "..", "日本語 ünïcödé", "x" * 300, "{0} {c} {}"],
)
def test_class_names_are_data_not_format_strings(name: str) -> None:
    s = spec(labels={"classes": [{"name": name}]}, prompts={"templates": ["a {} here", "{}"]})
    labels = resolve_labels(s.labels)
    assert basic_prompts(s, labels, name) == [f"a {name} here", name]
    rows = build_prompts(s, labels).rows
    assert [r.prompt for r in rows] == [f"a {name} here", name]
    assert parse_rows(dump_rows(rows), "x") == rows  # JSON lines survive any name


def test_fill_in_replaces_only_the_placeholder() -> None:
    assert fill_in("a photo of {}, {c}.", "a {} b") == "a photo of a {} b, {c}."


def test_images_are_spread_over_a_class_prompts() -> None:
    assert images_per_row(spec(generator={"model": "a/b", "imagesPerPrompt": 10}), 3) == [10, 10, 10]
    assert images_per_row(spec(generator={"model": "a/b", "imagesPerClass": 10}), 3) == [4, 3, 3]
    rg = spec(
        realGuidance={"source": {"uri": "file:///real/"}, "shots": 4, "imagesPerClass": 7},
        generator={"model": "a/b", "imagesPerClass": 100},
    )
    assert images_per_row(rg, 2) == [4, 3]  # realGuidance.imagesPerClass wins


def test_real_guidance_uses_class_name_prompts_even_when_le_is_asked_for() -> None:
    s = spec(
        prompts={"strategy": "language-enhancement", "model": "file:///nonexistent"},
        realGuidance={"source": {"uri": "file:///real/"}, "shots": 2, "imagesPerClass": 8},
    )
    result = build_prompts(s, resolve_labels(s.labels))  # would fail if it tried to load the LE model
    assert result.strategy == "real-guidance"
    assert [r.prompt for r in result.rows if r.class_index == 0] == ["a photo of a red circle."]
    assert {r.images for r in result.rows} == {8}


# ---------------------------------------------------------------------------------------- work items


def rows_for(images: list[list[int]]) -> list[PromptRow]:
    return [
        PromptRow(c, f"class {c}", i, f"prompt {c}.{i}", n, "basic")
        for c, per_prompt in enumerate(images)
        for i, n in enumerate(per_prompt)
    ]


@pytest.mark.parametrize("shards", [1, 2, 3, 7, 40])
def test_shards_cover_every_item_exactly_once_in_order(shards: int) -> None:
    rows = rows_for([[3, 2], [0, 4], [5]])
    items = [i for s in range(shards) for i in shard_items(rows, shard=s, shards=shards, stage_hash="h")]
    assert [i.index for i in items] == list(range(14))
    assert len({i.key for i in items}) == 14
    sizes = [shard_range(14, s, shards) for s in range(shards)]
    assert max(hi - lo for lo, hi in sizes) - min(hi - lo for lo, hi in sizes) <= 1


def test_item_seeds_depend_on_the_stage_hash_and_key_only() -> None:
    rows = rows_for([[4, 4]])
    one = {i.key: i.seed for i in shard_items(rows, shard=0, shards=1, stage_hash="h")}
    split = {i.key: i.seed for s in range(3) for i in shard_items(rows, shard=s, shards=3, stage_hash="h")}
    assert one == split
    assert len(set(one.values())) == 8
    assert item_seed("h", "c00000-p00000-i00000") != item_seed("other", "c00000-p00000-i00000")
    assert all(0 <= s < 2**63 for s in one.values())


def test_real_guidance_spreads_a_class_images_evenly_over_its_shots() -> None:
    rows = rows_for([[5, 5], [3]])  # class 0: 10 images, class 1: 3 images
    items = list(shard_items(rows, shard=0, shards=1, stage_hash="h", shots=4))
    per_shot: dict[tuple[int, int | None], int] = {}
    for i in items:
        per_shot[(i.class_index, i.shot)] = per_shot.get((i.class_index, i.shot), 0) + 1
    assert per_shot == {(0, 0): 3, (0, 1): 3, (0, 2): 2, (0, 3): 2, (1, 0): 1, (1, 1): 1, (1, 2): 1}


@pytest.mark.parametrize("shards", [1, 2, 3, 7, 40])
def test_interleaved_shards_make_the_same_items_and_each_holds_every_class_evenly(shards: int) -> None:
    rows = rows_for([[3, 2], [0, 4], [5], [6]])  # 20 images of 4 classes
    by_class = {
        i.key: i for s in range(shards) for i in shard_items(rows, shard=s, shards=shards, stage_hash="h")
    }
    parts = [
        list(shard_items(rows, shard=s, shards=shards, stage_hash="h", interleaved=True))
        for s in range(shards)
    ]
    items = [i for part in parts for i in part]
    assert sorted(i.index for i in items) == list(range(20))
    assert {i.key: i for i in items} == by_class  # the same keys, seeds and prompts: the same images
    assert [i.index for i in parts[0]] == list(range(0, 20, shards))  # every shards-th item, in order
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    if shards == 2:  # 5 images per class: each class in both shards, 2 or 3 each
        for part in parts:
            counts = Counter(i.class_index for i in part)
            assert set(counts) == {0, 1, 2, 3} and set(counts.values()) <= {2, 3}, counts
    rg = [
        i
        for s in range(shards)
        for i in shard_items(rows, shard=s, shards=shards, stage_hash="h", shots=2, interleaved=True)
    ]
    one = {i.key: i.shot for i in shard_items(rows, shard=0, shards=1, stage_hash="h", shots=2)}
    assert {i.key: i.shot for i in rg} == one  # Real Guidance's shot per image does not move with its shard


def test_the_shard_order_changes_the_generate_hash_only_when_interleaved() -> None:
    from synthrec.api import SyntheticDatasetSpec
    from synthrec.plan import dataset_hashes

    base = {
        "labels": {"preset": "tiny"},
        "generator": {"model": "tiny://sd"},
        "output": {"uri": "file:///tmp/o/"},
        "sharding": {"shards": 4},
    }
    hashes = {
        order: dataset_hashes(
            SyntheticDatasetSpec.model_validate(
                {**base, "sharding": {"shards": 4, **({"order": order} if order else {})}}
            )
        )
        for order in (None, "class", "interleaved")
    }
    assert hashes[None] == hashes["class"]  # datasets made before the field keep their hash and images
    assert hashes["interleaved"]["generate"] != hashes["class"]["generate"]
    assert hashes["interleaved"]["prompts"] == hashes["class"]["prompts"]


def test_even_split() -> None:
    assert even_split(10, 4) == [3, 3, 2, 2]
    assert even_split(2, 4) == [1, 1, 0, 0]
    assert sum(even_split(2000, 200)) == 2000


def test_damaged_prompt_lines_are_reported_with_their_line_number() -> None:
    good = PromptRow(0, "a", 0, "p", 1, "basic").to_json()
    missing = '{"class": 0, "class_name": "a", "index": 1, "prompt": "p", "source": "le"}'
    with pytest.raises(ValueError, match=r"prompts\.jsonl line 2: missing field 'images'"):
        parse_rows(f"{good}\n{missing}\n".encode(), "prompts.jsonl")
    with pytest.raises(ValueError, match="line 1: images must be a non-negative integer"):
        parse_rows(good.replace('"images": 1', '"images": -1').encode(), "prompts.jsonl")


# ---------------------------------------------------------------------------------- shard bytes


def test_tar_bytes_depend_only_on_names_and_contents(tmp_path) -> None:
    import numpy as np

    pixels = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    blobs = []
    for n in range(2):
        path = tmp_path / f"{n}.tar"
        tar = DeterministicTar(path)
        tar.add("k1.jpg", encode_jpeg(pixels, 95))
        tar.add("k1.json", sample_json({"class_name": '日本 "q" ../x', "class": 1}))
        tar.close()
        blobs.append(path.read_bytes())
    assert blobs[0] == blobs[1]
    with tarfile.open(fileobj=io.BytesIO(blobs[0])) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["k1.jpg", "k1.json"]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, "", "", 0o644)}
        assert tar.extractfile("k1.json").read().decode() == '{"class":1,"class_name":"日本 \\"q\\" ../x"}'


def test_a_stored_image_is_resized_with_antialiasing() -> None:
    import io

    import numpy as np
    from PIL import Image

    # A one-pixel checkerboard: antialiased downscaling averages it to grey, point sampling would keep
    # pure black or pure white.
    board = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    pixels = np.repeat(board[:, :, None], 3, axis=2)
    stored = np.asarray(Image.open(io.BytesIO(encode_jpeg(pixels, 95, size=32))))
    assert stored.shape == (32, 32, 3)
    assert 100 < stored.mean() < 155 and stored.std() < 20
    same = np.asarray(Image.open(io.BytesIO(encode_jpeg(pixels, 95))))
    assert same.shape == (128, 128, 3)
