"""Label-space presets: exact class lists and templates, their sources, and no torch at import."""

from __future__ import annotations

import importlib.util
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from synthrec.presets import (
    PRESET_ALIASES,
    PRESET_NAMES,
    TABLE1,
    LabelClass,
    PresetError,
    canonical_preset_name,
    get_preset,
)

CLASS_COUNTS = {
    "birdsnap": 500,
    "caltech101": 102,  # 101 categories plus 'background', the folder order clip_benchmark's loader uses
    "caltech256": 257,  # 256 categories plus 'clutter', as the official code's list
    "cifar10": 10,
    "cifar100": 100,
    "cub200": 200,
    "dtd": 47,
    "eurosat": 10,
    "fgvc_aircraft": 100,
    "flowers102": 102,
    "food101": 101,
    "imagenet1k": 1000,
    "imagenet2k": 2000,
    "imagenet_r": 200,
    "imagenet_sketch": 1000,
    "oxford_pets": 37,
    "pascal_voc": 20,
    "stanford_cars": 196,
    "sun397": 397,
    "tiny": 4,
}

PRESETS_DIR = Path(__file__).resolve().parents[2] / "synthrec" / "presets"


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} must be installed for this test"
    return Path(spec.origin).parent.joinpath(*parts)


def _open_clip_metadata() -> dict:
    # Read the source independently of synthrec's loader (and without importing open_clip, i.e. torch).
    return runpy.run_path(str(_package_file("open_clip", "zero_shot_metadata.py")))


def _clip_benchmark(filename: str) -> dict:
    return json.loads(_package_file("clip_benchmark", "datasets", filename).read_text())


def test_preset_names_are_exactly_the_papers_datasets_plus_tiny():
    assert set(PRESET_NAMES) == set(CLASS_COUNTS)
    assert list(PRESET_NAMES) == sorted(PRESET_NAMES)
    # Table 1's 17 datasets, the pre-training study's IN-2K and VOC (Tables 9-11) and the offline demo
    others = {"tiny", "imagenet2k", "pascal_voc"}
    assert {row[0] for row in TABLE1} == set(PRESET_NAMES) - others and len(TABLE1) == 17


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_loads_with_the_exact_class_count_and_unique_names(name):
    preset = get_preset(name)
    assert preset.name == name
    assert len(preset.classes) == CLASS_COUNTS[name]
    assert len(set(preset.names)) == len(preset.names)
    for label in preset.classes:
        assert label.name and label.name == label.name.strip()
        assert label.head_name and label.head_name == label.head_name.strip()
    assert set(preset.provenance) >= {"classes", "head_names", "templates", "prompts", "filter_template"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_head_names_are_unique_except_where_imagenets_source_repeats_one(name):
    heads = get_preset(name).head_names
    repeated = sorted({h for h in heads if heads.count(h) > 1})
    # open_clip, CLIP's notebook and the official code all name 657/744 and 836/837 alike.
    imagenets = ("imagenet1k", "imagenet2k", "imagenet_sketch")
    assert repeated == (["missile", "sunglasses"] if name in imagenets else [])


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_templates_and_prompt_formats_each_hold_exactly_one_placeholder(name):
    preset = get_preset(name)
    assert preset.templates
    for template in preset.templates:
        assert template.count("{c}") == 1
        assert template.format(c="X").count("X") == 1
    assert preset.prompt_templates and all(t.count("{}") == 1 for t in preset.prompt_templates)
    assert preset.filter_template.count("{c}") == 1
    assert preset.le_input.count("{}") == 1
    assert preset.prompt_wrapper is None or preset.prompt_wrapper.count("{}") == 1


def test_head_templates_are_the_papers_head_initialisation_sets():
    # Official code: src/classifier-tuning/src/templates/transfer_ds_template.py.
    assert get_preset("eurosat").templates == ("a centered satellite photo of {c}.",)
    assert get_preset("dtd").templates == ("{c} texture.",)
    assert get_preset("fgvc_aircraft").templates == ("a photo of a {c}, a type of aircraft.",)
    assert get_preset("food101").templates == ("a photo of a {c}, a type of food.",)
    assert get_preset("flowers102").templates == ("a photo of a {c}, a type of flower.",)
    assert get_preset("oxford_pets").templates == ("a photo of a {c}, a type of pet.",)
    assert get_preset("sun397").templates == ("a photo of a {c}.", "a photo of the {c}.")
    cars = get_preset("stanford_cars").templates
    assert len(cars) == 8 and "a photo of my dirty {c}." in cars
    for cifar in ("cifar10", "cifar100"):
        templates = get_preset(cifar).templates
        assert len(templates) == 18 and "a blurry photo of a {c}." in templates
    imagenet = get_preset("imagenet1k").templates
    assert imagenet[0] == "itap of a {c}." and len(imagenet) == 7
    assert get_preset("imagenet_sketch").templates == get_preset("imagenet_r").templates == imagenet
    for birds in ("cub200", "birdsnap"):
        assert get_preset(birds).templates == ("a photo of a {c}, a type of bird.",)
    assert len(get_preset("caltech101").templates) == 34  # no paper set: clip_benchmark's
    assert get_preset("caltech256").templates == ("a photo of a {c}.",)  # the official simple_template


def test_filter_templates_are_the_official_filters_prompt_per_dataset():
    # Official code: src/classifier-tuning/src/select_glide_ims_by_clip.py writes "a photo of " + "a <name>"
    # (the article is part of its names) and the EuroSAT prompt it runs.
    official = {
        "eurosat": "a centered satellite photo of a {c}.",
        "fgvc_aircraft": "a photo of a {c}, a type of aircraft.",
        "cub200": "a photo of a {c}, a type of bird.",
        "sun397": "a photo of a {c}.",
        "caltech101": "a photo of a {c}.",
        "caltech256": "a photo of a {c}.",
        "cifar10": "a photo of a {c}.",
        "cifar100": "a photo of a {c}.",
        "imagenet1k": "a photo of a {c}.",
        "imagenet2k": "a photo of a {c}.",  # ImageNet's: IN-2K extends it
    }
    for name, template in official.items():
        preset = get_preset(name)
        assert preset.filter_template == template, name
        assert preset.provenance["filter_template"].startswith("official code"), name
    for name in set(PRESET_NAMES) - set(official) - {"tiny"}:
        assert get_preset(name).provenance["filter_template"].startswith("synthrec:"), name
    assert get_preset("birdsnap").filter_template == "a photo of a {c}, a type of bird."
    assert get_preset("imagenet_sketch").filter_template == "a sketch of a {c}."


def test_eurosat_generation_names_line_up_with_coops_head_names():
    eurosat = get_preset("eurosat")
    pairs = [(c.name, c.head_name) for c in eurosat.classes]
    assert pairs[0] == ("Annual Crop Land", "annual crop land")
    assert pairs[1] == ("Forest", "forest")
    assert pairs[2] == ("Herbaceous Vegetation Land", "brushland or shrubland")
    assert pairs[3] == ("Highway or Road", "highway or road")
    assert pairs[4] == ("Industrial Buildings", "industrial buildings or commercial buildings")
    assert pairs[5] == ("Pasture Land", "pasture land")
    assert pairs[6] == ("Permanent Crop Land", "permanent crop land")
    assert pairs[7] == ("Residential Buildings", "residential buildings or homes or apartments")
    assert pairs[8] == ("River", "river")
    assert pairs[9] == ("Sea or Lake", "lake or sea")
    # The official Real Guidance prompt (src/glide/glide_fsl.py), no full stop.
    assert eurosat.prompt_templates == ("a centered satellite photo of {}",)
    assert eurosat.prompt_wrapper == "a centered satellite photo of {}"
    assert eurosat.le_input.format("Sea or Lake") == "a Sea or Lake"
    # The release's folders (AnnualCrop, ...), matched to the classes in label order.
    assert [c.folder for c in eurosat.classes][:3] == ["AnnualCrop", "Forest", "HerbaceousVegetation"]
    assert eurosat.classes[9].folder == "SeaLake"


def test_other_presets_use_the_plain_prompt_and_no_wrapper():
    styled = {"eurosat", "imagenet_sketch", "imagenet_r"}
    own_head = {
        "eurosat",
        "imagenet1k",
        "imagenet2k",
        "imagenet_sketch",
        "sun397",
        "stanford_cars",
        "flowers102",
        "caltech256",
    }
    for name in set(PRESET_NAMES) - styled:
        preset = get_preset(name)
        assert preset.prompt_templates == ("a photo of a {}.",)
        assert preset.prompt_wrapper is None
        assert preset.le_input == "a {}"
        assert (preset.head_names == preset.names) == (name not in own_head), name


def test_the_robustness_sets_carry_their_style_in_the_generation_prompts():
    sketch = get_preset("imagenet_sketch")
    assert sketch.prompt_templates == ("a sketch of a {}.",) and sketch.prompt_wrapper == "a sketch of {}"
    assert sketch.names == get_preset("imagenet1k").names  # the same 1000 classes
    styles = get_preset("imagenet_r").prompt_templates
    openai = [t("{}") for t in _open_clip_metadata()["OPENAI_IMAGENET_TEMPLATES"]]
    assert len(styles) == 13 and set(styles) <= set(openai)  # worded as the package words them
    assert {"a sketch of a {}.", "a cartoon {}.", "a origami {}.", "a {} in a video game."} <= set(styles)


def test_imagenet_r_is_timms_subset_of_open_clips_names_with_wordnet_folders():
    timm_info = _package_file("timm", "data", "_info")
    indices = [int(i) for i in (timm_info / "imagenet_r_indices.txt").read_text().split()]
    names = _open_clip_metadata()["IMAGENET_CLASSNAMES"]
    r = get_preset("imagenet_r")
    assert list(r.names) == [names[i] for i in indices]
    assert r.names[:3] == ("goldfish", "great white shark", "hammerhead shark") and r.names[-1] == "acorn"
    assert [c.folder for c in r.classes] == (timm_info / "imagenet_r_synsets.txt").read_text().split()
    imagenet = [c.folder for c in get_preset("imagenet1k").classes]
    assert imagenet == (timm_info / "imagenet_synsets.txt").read_text().split()
    assert imagenet[0] == "n01440764" and [c.folder for c in r.classes] == [imagenet[i] for i in indices]


def test_sun397_heads_are_coops_names_as_the_official_head_uses():
    sun = get_preset("sun397")
    differing = [(c.name, c.head_name) for c in sun.classes if c.name != c.head_name]
    assert len(differing) == 126
    assert ("apartment building outdoor", "outdoor apartment building") in differing
    assert ("desert sand", "sand desert") in differing and sun.classes[0].head_name == "abbey"
    for name, head in differing:  # CoOp reorders the parts of the path, never changes a word
        assert sorted(name.split()) == sorted(head.split())


def test_stanford_cars_heads_put_the_year_first_as_coop_and_the_official_head():
    cars = get_preset("stanford_cars")
    assert cars.classes[0].head_name == "2000 AM General Hummer SUV"
    assert cars.classes[195].head_name == "2012 smart fortwo Convertible"
    for c in cars.classes:
        year, rest = c.head_name.split(" ", 1)
        assert year.isdigit() and len(year) == 4 and c.name == f"{rest} {year}"


def test_flowers_heads_take_the_official_spelling_of_three_classes():
    flowers = get_preset("flowers102")
    differing = {i: (c.name, c.head_name) for i, c in enumerate(flowers.classes) if c.name != c.head_name}
    assert differing == {
        15: ("globe flower", "globe-flower"),
        59: ("pink and yellow dahlia", "pink-yellow dahlia"),
        92: ("air plant", "ball moss"),
    }


def test_caltech256_cub_and_birdsnap_follow_the_releases_and_the_official_names():
    caltech = get_preset("caltech256")
    bonsai = caltech.classes[14]
    assert (bonsai.name, bonsai.head_name, bonsai.folder) == ("bonsai", "bonsai-101", "015.bonsai-101")
    flag = caltech.classes[1]
    assert (flag.name, flag.head_name, flag.folder) == ("american flag", "american-flag", "002.american-flag")
    assert caltech.classes[-1].folder == "257.clutter"
    assert [c.folder[:3] for c in caltech.classes] == [f"{i:03d}" for i in range(1, 258)]
    cub = get_preset("cub200")
    assert (cub.classes[0].name, cub.classes[0].folder) == (
        "Black footed Albatross",
        "001.Black_footed_Albatross",
    )
    assert cub.classes[140].name == "Artic Tern" and cub.names[-1] == "Common Yellowthroat"
    birdsnap = get_preset("birdsnap").names
    assert birdsnap == tuple(sorted(birdsnap)) and birdsnap[:2] == ("Acadian Flycatcher", "Acorn Woodpecker")


def test_every_hand_kept_list_says_where_it_comes_from():
    for path in sorted(PRESETS_DIR.glob("*.txt")):
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert header, f"{path.name} has no source comment"
        text = " ".join(header)
        assert any(source in text for source in ("CVMI-Lab", "CoOp", "openai/CLIP", "torchvision")), path.name


def test_imagenet_is_open_clips_list_and_templates_not_a_copy():
    source = _open_clip_metadata()
    imagenet = get_preset("imagenet1k")
    original = list(source["IMAGENET_CLASSNAMES"])
    assert list(imagenet.head_names) == original
    differing = {i: n for i, (n, s) in enumerate(zip(imagenet.names, original, strict=True)) if n != s}
    # Only the second of each repeated pair takes another WordNet lemma of its synset.
    assert differing == {744: "projectile", 836: "sunglass"}
    assert list(imagenet.templates) == [t("{c}") for t in source["SIMPLE_IMAGENET_TEMPLATES"]]
    # Nothing under synthrec/presets carries ImageNet's names itself.
    for path in PRESETS_DIR.iterdir():
        if path.is_file() and path.suffix in {".txt", ".json", ".py"}:
            assert "great white shark" not in path.read_text(), path


def test_clip_benchmark_lists_are_taken_as_shipped():
    names = _clip_benchmark("en_classnames.json")
    templates = _clip_benchmark("en_zeroshot_classification_templates.json")
    assert list(get_preset("eurosat").head_names) == names["eurosat"]
    for preset, key in [("oxford_pets", "pets"), ("flowers102", "flowers"), ("caltech101", "caltech101")]:
        assert list(get_preset(preset).names) == names[key]
    for preset, key in [("cifar10", "cifar10"), ("sun397", "sun397"), ("stanford_cars", "cars")]:
        assert list(get_preset(preset).templates) == templates[key]


def test_written_lists_follow_the_datasets_canonical_label_order():
    def underscored(names):
        return [n.replace(" ", "_") for n in names]

    assert get_preset("cifar10").names[:3] == ("airplane", "automobile", "bird")
    cifar100 = underscored(get_preset("cifar100").names)
    assert cifar100 == sorted(cifar100)  # fine labels are alphabetical by their underscored names
    food = underscored(get_preset("food101").names)
    assert food == sorted(food) and food.index("cheese_plate") < food.index("cheesecake")
    dtd = list(get_preset("dtd").names)
    assert dtd == sorted(dtd) and dtd[30] == "polka-dotted"
    aircraft = list(get_preset("fgvc_aircraft").names)
    assert aircraft == sorted(aircraft)  # variants.txt happens to be in code-point order
    assert aircraft[37:40] == ["BAE 146-200", "BAE 146-300", "BAE-125"]
    cars = get_preset("stanford_cars").names
    assert (cars[0], cars[195]) == ("AM General Hummer SUV 2000", "smart fortwo Convertible 2012")
    sun = get_preset("sun397").names
    assert (sun[0], sun[206], sun[207], sun[396]) == ("abbey", "jail indoor", "jail cell", "youth hostel")
    pets = get_preset("oxford_pets").names
    assert pets[:3] == ("Abyssinian", "American Bulldog", "American Pit Bull Terrier")  # class-id order
    assert get_preset("caltech101").names[:3] == ("background", "off-center face", "centered face")


def test_tiny_preset_matches_the_offline_demo_dataset():
    tiny = get_preset("tiny")
    assert tiny.names == ("red circle", "green square", "blue triangle", "yellow cross")
    assert tiny.head_names == tiny.names
    assert tiny.templates == ("a photo of a {c}.", "a drawing of a {c}.")
    assert tiny.prompt_templates == ("a photo of a {}.",)


def test_names_resolve_through_aliases_case_and_dashes():
    assert all(target in PRESET_NAMES for target in PRESET_ALIASES.values())
    assert canonical_preset_name("ImageNet") == "imagenet1k"
    assert canonical_preset_name("FGVC-Aircraft") == "fgvc_aircraft"
    assert canonical_preset_name(" pets ") == "oxford_pets"
    assert canonical_preset_name("EuroSAT") == "eurosat"
    assert get_preset("cars") is get_preset("stanford_cars")


def test_unknown_preset_names_every_valid_one_and_a_close_match():
    with pytest.raises(PresetError) as caught:
        get_preset("imagnet")
    message = str(caught.value)
    assert "'imagnet'" in message and "Did you mean 'imagenet1k'?" in message
    assert all(name in message for name in PRESET_NAMES)
    with pytest.raises(ValueError, match="unknown label preset 'mnist'"):
        canonical_preset_name("mnist")


def test_label_class_head_name_defaults_to_the_name():
    assert LabelClass("Forest").head_name == "Forest"
    assert LabelClass("Forest", "forest").head_name == "forest"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_loading_every_preset_leaves_torch_and_the_source_packages_unimported():
    result = _run(
        "import sys\n"
        "from synthrec.presets import PRESET_NAMES, get_preset\n"
        "for name in PRESET_NAMES: get_preset(name)\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'clip_benchmark') if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_the_workers_extra_presets_that_need_it_say_what_to_install():
    result = _run(
        "import sys\n"
        "sys.modules['open_clip'] = None; sys.modules['clip_benchmark'] = None  # as if not installed\n"
        "from synthrec.presets import PRESET_NAMES, PresetError, get_preset\n"
        "print(len(PRESET_NAMES), len(get_preset('tiny').classes))\n"
        "for name in ('imagenet1k', 'cifar10', 'eurosat'):\n"
        "    try:\n"
        "        get_preset(name)\n"
        "    except PresetError as error:\n"
        "        print(name, error)\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "20 4"
    assert [line.split()[0] for line in lines[1:]] == ["imagenet1k", "cifar10", "eurosat"]
    assert "'open_clip'" in lines[1] and "'clip_benchmark'" in lines[2]
    assert all("synthrec[workers]" in line for line in lines[1:])


def test_in2k_is_imagenet1k_plus_1000_imagenet21k_classes_drawn_reproducibly_from_timms_lists():
    info = _package_file("timm", "data", "_info")
    in1k_synsets = (info / "imagenet_synsets.txt").read_text().split()
    in12k = set((info / "imagenet12k_synsets.txt").read_text().split())
    lemmas = dict(
        line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    in2k, in1k = get_preset("in2k"), get_preset("imagenet1k")
    assert in2k.classes[:1000] == in1k.classes and in2k.templates == in1k.templates
    extra = in2k.classes[1000:]
    synsets = [c.folder for c in extra]
    assert len(set(synsets)) == 1000 and set(synsets) <= in12k and not set(synsets) & set(in1k_synsets)
    for label in extra:  # each named by one of its own WordNet lemmas, the head alike
        assert label.name in [n.strip() for n in lemmas[label.folder].split(",")]
        assert label.head_name == label.name
    assert len(set(in2k.names)) == 2000
    assert [c.folder for c in in1k.classes] == in1k_synsets == [c.folder for c in in2k.classes[:1000]]
    assert "blake2b" in in2k.provenance["classes"] and "imagenet12k_synsets.txt" in in2k.provenance["classes"]
    # the draw is fixed: the same first and last classes on every machine and version of synthrec
    assert (extra[0].folder, extra[-1].folder) == ("n02752496", "n02882894")


def test_pascal_voc_names_its_classes_in_words_with_the_devkits_spelling_as_folders():
    voc = get_preset("voc")
    folders = [c.folder for c in voc.classes]
    assert len(folders) == 20 and folders[:4] == ["aeroplane", "bicycle", "bird", "boat"]  # devkit order
    assert folders[-1] == "tvmonitor" and voc.names[-1] == "tv monitor"
    assert voc.names[10] == "dining table" and folders[10] == "diningtable"
