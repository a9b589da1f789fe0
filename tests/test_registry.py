"""The method registry: every consumer reads it, so a method registered once shows everywhere.

A toy method (one constant image per class) is registered and found in ``d3 compress --help``, its own
``--help``, ``d3 compress``, ``d3 info``, ``d3 verify``, D3Dataset and d3codec.compress; the old
``--method``/``--objective`` spelling still runs, with a deprecation notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner

from d3codec import D3Dataset
from d3codec.cli.main import main
from d3codec.decode.verify import verify_archive
from d3codec.encode.interface import Encoded, Encoder, preset_config
from d3codec.format.container import Section
from d3codec.methods import (
    ArchiveKind,
    Method,
    Option,
    archive_kind,
    archive_kind_names,
    get_method,
    method_names,
    register_archive_kind,
    register_method,
)
from d3codec.registry import unregister


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@dataclass(frozen=True)
class ToyConfig:
    iterations: int = 1  # unused: the toy distils nothing
    real_per_class: int = 1  # unused
    brightness: float = 0.25  # the value of every pixel of every image


@dataclass(frozen=True)
class ToyPlan:
    max_bytes: int


class ToyEncoder(Encoder):
    """One constant image per class, in a section ``images``."""

    method = "toy"
    presets = {"fast": ToyConfig(), "paper": ToyConfig(brightness=0.75)}

    def __init__(self, config: ToyConfig | None = None):
        self.config = config or self.presets["fast"]

    @classmethod
    def from_options(cls, preset: str = "fast", checkpoint=None, **overrides) -> "ToyEncoder":
        return cls(preset_config(cls.presets, preset, overrides))

    def plan(self, spec, budget, meta_for, real=None) -> ToyPlan:
        return ToyPlan(budget)

    def distill(self, real, plan, *, device, seed, progress=True) -> Encoded:
        k = real.num_classes
        images = torch.full((k, *real.image_shape), self.config.brightness)
        return Encoded(
            [Section.tensors("images", {"images": images, "labels": torch.arange(k, dtype=torch.int32)})],
            {"brightness": self.config.brightness},
        )


def decode_toy(reader, meta, limits=None):
    tensors = reader.read_tensors("images")
    return tensors["images"].float(), tensors["labels"].long(), None


TOY_KIND = ArchiveKind(
    "toy", {"meta": True, "images": True}, decode=decode_toy, describe=lambda params: "one constant image per class"
)


@pytest.fixture
def toy():
    register_archive_kind(TOY_KIND)
    method = register_method(
        Method(
            "toy",
            "A toy: one constant image per class.",
            "toy",
            ToyEncoder,
            (Option("--brightness", "brightness", "Every pixel's value.", kind="float", low=0.0, high=1.0),),
        )
    )
    yield method
    unregister("toy")


def test_the_registry_names_every_method_and_archive_kind_once():
    assert method_names() == ["dm", "bptt", "d3", "d2m"]
    assert archive_kind_names() == ["pixel", "d3", "d2m"]
    assert [get_method(n).archive for n in method_names()] == ["pixel", "pixel", "d3", "d2m"]
    assert archive_kind("d2m").sampled and not archive_kind("pixel").sampled and archive_kind(7) is None
    with pytest.raises(ValueError, match="unknown method 'pixle'; use one of dm, bptt, d3, d2m"):
        get_method("pixle")
    with pytest.raises(ValueError, match="registered already"):
        register_method(get_method("dm"))
    with pytest.raises(ValueError, match="lower-case"):
        register_method(Method("Big Name", "x", "pixel", ToyEncoder))
    with pytest.raises(ValueError, match="exactly one of decode and load_sampler"):
        ArchiveKind("x", {"meta": True})
    with pytest.raises(ValueError, match="kind must be one of"):
        Option("--x", "x", "x", kind="list")
    with pytest.raises(ValueError, match="has no option colour"):
        get_method("dm").make_encoder("fast", {"colour": 3})
    assert get_method("d3").make_encoder("paper", {"latent_dim": 7}).config.latent_dim == 7


def test_a_toy_method_registered_once_shows_everywhere(toy, image_folder, tmp_path, tiny_real):
    listed = run("compress", "--help")
    assert listed.exit_code == 0 and "toy" in listed.output and "A toy: one constant image" in listed.output
    own = run("compress", "toy", "--help")
    assert "toy options" in own.output and "--brightness" in own.output
    assert "[default: 0.25 (fast), 0.75 (paper)]" in " ".join(own.output.split())

    out = tmp_path / "t.d3"
    r = run(
        "compress",
        "toy",
        image_folder,
        "--resolution",
        8,
        "--budget",
        20_000,
        "--brightness",
        0.5,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert "one constant image per class" in r.output
    info = json.loads(run("info", out, "--json").output)
    assert info["meta"]["method"] == "toy" and info["meta"]["params"] == {"brightness": 0.5}
    assert verify_archive(out).ok and run("verify", out).exit_code == 0
    ds = D3Dataset(out)
    assert len(ds) == 3 and torch.all(ds.images == 0.5)

    from d3codec.encode.pipeline import compress

    compress(tiny_real, tmp_path / "api.d3", method="toy", budget=20_000, progress=False)
    assert torch.all(D3Dataset(tmp_path / "api.d3").images == 0.25)


def test_an_unregistered_kind_is_refused_with_the_kinds_this_version_reads(toy, image_folder, tmp_path):
    out = tmp_path / "t.d3"
    assert (
        run(
            "compress",
            "toy",
            image_folder,
            "--resolution",
            8,
            "--budget",
            20_000,
            "-o",
            out,
            "--quiet",
            "--device",
            "cpu",
        ).exit_code
        == 0
    )
    unregister("toy")
    try:
        r = run("info", out)
        assert r.exit_code == 1 and "unknown method 'toy'" in r.output and "reads pixel, d3, d2m" in r.output
    finally:  # the fixture unregisters it again
        register_archive_kind(TOY_KIND)
        register_method(toy)


def test_the_old_method_and_objective_spelling_still_runs_with_a_notice(image_folder, tmp_path, tiny_real):
    out = tmp_path / "b.d3"
    r = run(
        "compress",
        image_folder,
        "--method",
        "pixel",
        "--objective=bptt",
        "--resolution",
        16,
        "--budget",
        8_000,
        "--init",
        "random",
        "--images-per-class",
        2,
        "--inner-epochs",
        1,
        "--iterations",
        1,
        "--real-per-class",
        4,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert "deprecated" in r.output and "d3 compress bptt DATASET" in r.output
    assert D3Dataset(out).schedule is not None
    r = run("compress", image_folder, "--method", "d3", "--objective", "bptt", "--budget", 8_000, "-o", out)
    assert r.exit_code == 2 and "is no method" in r.output
    r = run("compress", "dm", image_folder, "--method", "d3", "--budget", 8_000, "-o", out)
    assert r.exit_code == 2 and "keep one" in r.output
    from d3codec.encode.pipeline import compress

    with pytest.warns(DeprecationWarning, match='now called "dm"'):
        with pytest.raises(ValueError, match="exactly one of `ipc`"):
            compress(tiny_real, out, method="pixel")


def test_presets_take_overrides_of_their_fields_types_only():
    from d3codec.encode.interface import preset_config
    from d3codec.methods.d3 import PRESETS

    config = preset_config(
        PRESETS,
        "fast",
        {
            "iterations": "30",
            "latent_dim": 8.0,
            "soft_labels": "false",
            "lr_priors": "0.5",
            "decoder_dtype": "float16",
            "subtasks": None,
        },
    )
    assert (
        config.iterations,
        config.latent_dim,
        config.soft_labels,
        config.lr_priors,
        config.decoder_dtype,
        config.subtasks,
    ) == (30, 8, False, 0.5, "float16", 1)
    for bad, needle in [
        ({"iterations": 2.5}, "iterations must be int, not 2.5"),
        ({"iterations": True}, "iterations must be int"),
        ({"soft_labels": 1}, "must be bool"),
        ({"lr_priors": "inf"}, "must be float"),
        ({"decoder_dtype": 8}, "must be str"),
        ({"colour": 1}, "D3Config has no field colour; its fields: iterations"),
    ]:
        with pytest.raises(ValueError, match=needle):
            preset_config(PRESETS, "fast", bad)


def test_compress_refuses_a_picture_or_an_existing_archive_as_output_before_any_work(toy, image_folder, tmp_path):
    base = ["compress", "toy", image_folder, "--resolution", 8, "--budget", 20_000, "--device", "cpu", "--quiet"]
    r = run(*base, "-o", tmp_path / "grid.png")
    assert r.exit_code == 1 and "not a picture" in r.output and "--grid grid.png" in r.output
    r = run(*base, "-o", tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.output
    out = tmp_path / "t.d3"
    out.write_bytes(b"a user's file")
    r = run(*base, "-o", out)
    assert r.exit_code == 1 and "exists; pass --force" in r.output and out.read_bytes() == b"a user's file"
    assert run(*base, "-o", out, "--force").exit_code == 0 and D3Dataset(out).meta["method"] == "toy"


def test_the_dataset_says_how_its_images_and_labels_were_made(toy, image_folder, tmp_path):
    out = tmp_path / "t.d3"
    assert (
        run(
            "compress",
            "toy",
            image_folder,
            "--resolution",
            8,
            "--budget",
            20_000,
            "-o",
            out,
            "--quiet",
            "--device",
            "cpu",
        ).exit_code
        == 0
    )
    ds = D3Dataset(out)
    assert torch.equal(ds.targets, torch.arange(3)) and ds.targets.dtype == torch.int64
    assert "images=3 (stored in the archive)" in repr(ds) and "targets: hard labels" in repr(ds)


def test_compress_and_verify_speak_json_for_scripts(toy, image_folder, tmp_path):
    out = tmp_path / "t.d3"
    r = run(
        "compress",
        "toy",
        image_folder,
        "--resolution",
        8,
        "--budget",
        20_000,
        "-o",
        out,
        "--quiet",
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.splitlines()[-1])
    assert report["file_bytes"] == out.stat().st_size and report["budget"] == 20_000 and report["method"] == "toy"
    assert report["stored"] == "one constant image per class" and report["params"] == {"brightness": 0.25}
    checks = json.loads(run("verify", out, "--json").output)
    assert (
        checks["ok"] and checks["failure"] is None and [c[0] for c in checks["checks"]][:2] == ["container", "sections"]
    )
    data = bytearray(out.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.d3").write_bytes(bytes(data))
    r = run("verify", tmp_path / "bad.d3", "--json")
    assert r.exit_code == 1 and json.loads(r.output)["ok"] is False and json.loads(r.output)["failure"]
