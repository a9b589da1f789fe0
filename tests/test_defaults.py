"""The default rule: what runs when no method is named (d3codec.encode.defaults)."""

import pytest

import d3codec
from d3codec.encode.defaults import MANY_CLASSES, class_count, default_choice, default_method, with_user_options


def test_the_rule_picks_by_classes_budget_and_preset():
    assert default_method(MANY_CLASSES + 1) == "d3" and default_method(MANY_CLASSES) == "dm"
    big = default_choice(1000, 2)
    assert big.method == "d3" and "ImageNet-scale" in big.reason
    assert dict(default_choice(1000, 2).options) == {"subtasks": 5}  # the README's ImageNet plan
    small = default_choice(10, 1)
    assert small.method == "dm"
    assert dict(small.options) == {"formation": "dct-variance", "formation_factor": 3, "matching": "dance"}
    assert default_choice(10, 2.0).options["formation_factor"] == 3
    assert default_choice(10, 2.5).options["formation_factor"] == 2
    assert "matching" not in default_choice(10, 1, "smoke").options  # no expert pool for a first picture
    assert "matching" not in default_choice(10, 1, "rehearsal").options
    with pytest.raises(TypeError):
        small.options["formation"] = "pixels"  # the rule is not changed by a caller


def test_user_options_win_and_a_named_formation_keeps_its_factor():
    choice = default_choice(10, 1)
    assert with_user_options(choice, None)["formation_factor"] == 3
    mine = with_user_options(choice, {"formation": "pixels", "matching": None, "iterations": 5})
    assert mine == {"formation": "pixels", "matching": "dance", "iterations": 5}
    assert with_user_options(choice, {"formation_factor": 4})["formation_factor"] == 4


def test_class_count_without_loading(image_folder, tmp_path):
    assert class_count("fashion-mnist") == 10 and class_count("FashionMNIST") == 10
    assert class_count("imagenet") == 1000 and class_count("cifar100") == 100
    assert class_count(str(image_folder)) == 3
    assert class_count(str(tmp_path / "nowhere")) is None


def test_compress_with_no_method_runs_the_rule(tiny_real, tmp_path):
    result = d3codec.compress(
        tiny_real, tmp_path / "a.d3", ipc=1, options={"iterations": 1, "real_per_class": 4}, progress=False
    )
    config = result.params["config"]
    assert (config["formation"], config["formation_factor"], config["matching"]) == ("dct-variance", 3, "dance")
    named = d3codec.compress(
        tiny_real, tmp_path / "b.d3", ipc=1, method="dm", options={"iterations": 1}, progress=False
    )
    assert named.params["config"]["formation"] == "pixels"  # a method named keeps its preset's settings
