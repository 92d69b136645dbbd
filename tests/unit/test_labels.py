"""Label spaces resolve to one ordered class list that every stage shares."""

from __future__ import annotations

import pytest

from synthrec.api import LabelSpace
from synthrec.api.labels import class_slug, filter_prompts, normalise_folder_name, resolve_labels


def test_preset_resolves_with_generation_and_head_names() -> None:
    labels = resolve_labels(LabelSpace(preset="eurosat"))
    assert len(labels) == 10
    assert labels.classes[0].name == "Annual Crop Land" and labels.classes[0].head_name == "annual crop land"
    assert labels.templates == ("a centered satellite photo of {c}.",)
    assert labels.prompt_wrapper == "a centered satellite photo of {}"
    assert [c.index for c in labels.classes] == list(range(10))


def test_subset_keeps_preset_order_and_rejects_unknown_names() -> None:
    labels = resolve_labels(LabelSpace(preset="cifar10", subset=["truck", "airplane"]))
    assert labels.names == ["airplane", "truck"]
    with pytest.raises(ValueError, match="'unicorn' not in preset 'cifar10'"):
        resolve_labels(LabelSpace(preset="cifar10", subset=["unicorn"]))


def test_explicit_classes_and_overrides() -> None:
    labels = resolve_labels(
        LabelSpace(classes=[{"name": "Cat", "headName": "cat"}, {"name": "Dog"}], templates=["{c} art."])
    )
    assert labels.head_names == ["cat", "Dog"] and labels.templates == ("{c} art.",)
    assert labels.prompt_templates == ("a photo of a {}.",) and labels.source == "explicit"
    assert labels.filter_template == "a photo of a {c}."


def test_the_filter_scores_one_prompt_per_class_unless_asked_for_the_head_ensemble() -> None:
    eurosat = resolve_labels(LabelSpace(preset="eurosat"))
    official = filter_prompts(eurosat, "filter-template")
    # The official CLIP Filter: the generation name in the filter template, article kept.
    assert official.prompts(0) == ["a centered satellite photo of a Annual Crop Land."]
    assert official.describe()["names"] == "generation names"
    head = filter_prompts(resolve_labels(LabelSpace(preset="cifar10")), "head-templates")
    assert len(head.prompts(0)) == 18 and head.prompts(0)[0] == "a photo of a airplane."
    assert filter_prompts(resolve_labels(LabelSpace(preset="cifar10")), "filter-template").prompts(0) == [
        "a photo of a airplane."
    ]
    custom = resolve_labels(LabelSpace(preset="eurosat", filterTemplate="satellite image of {c}"))
    assert filter_prompts(custom, "filter-template").prompts(9) == ["satellite image of Sea or Lake"]
    with pytest.raises(ValueError, match="filterTemplate needs a"):
        LabelSpace(preset="eurosat", filterTemplate="no placeholder")


@pytest.mark.parametrize("name", ["../../etc", "a/b", "café ☕", 'quote"d', "x" * 300, "..", ""])
def test_class_slugs_are_safe_keys(name: str) -> None:
    slug = class_slug(name, 7)
    assert slug.startswith("0007-") and "/" not in slug and ".." not in slug and len(slug) <= 53
    assert slug.isascii()


def test_folder_names_match_class_names_loosely() -> None:
    assert normalise_folder_name("Annual_Crop-Land") == normalise_folder_name("annual crop land")
