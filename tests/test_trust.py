"""Trust round 2: every hostile archive and input of issue 22 is refused or bounded, in one line.

Each archive here is hand-made with valid checksums (tests/hostile.py). A refusal of the decode
budget is a D3LimitError raised before the expansion is allocated: the tests assert the error and
its message (figure, limit, override), never a time.
"""

import json
import types

import hostile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from d3codec import D3Dataset, DecodeLimits
from d3codec.cli.main import main
from d3codec.decode.expand import grid_image
from d3codec.decode.verify import verify_archive
from d3codec.errors import D3Error, D3FormatError, D3LimitError
from d3codec.format.limits import default_draw_cap
from d3codec.methods.d3.merge import merge_archives


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_refusal(result, *needles):
    """A refusal as the issue asks: exit status 1, one line, no traceback, naming what it must."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and lines[-1].startswith(("Error:", "FAILED"))
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


# -- expansion bombs ----------------------------------------------------------------------------


def test_a_tiny_d3_archive_declaring_a_million_megapixels_draws_what_it_is_worth(tmp_path):
    data = hostile.d3_archive(classes=1, image_shape=(1, 4096, 4096), priors_per_class=1000, soft_labels=False)
    assert len(data) < 2000
    ds = D3Dataset(data)  # 1 000 priors, but a 2 KB file is worth one image a class by default
    assert len(ds) == 1 and ds.images.shape == (1, 1, 4096, 4096)
    with pytest.raises(D3LimitError, match="max_bytes") as error:  # asking for one image a prior is refused
        D3Dataset(data, samples_per_class=1000)
    assert error.value.value > 1000 * 4096**2 * 4 and error.value.option == "--max-bytes"
    assert verify_archive(data).ok
    path = tmp_path / "bomb.d3"
    path.write_bytes(data)
    one_line_refusal(run("expand", path, "-o", tmp_path / "out", "--samples-per-class", 1000), "--max-bytes")
    assert not (tmp_path / "out").exists()


def test_a_d2m_archive_declaring_ten_million_draws_per_class_draws_what_it_is_worth():
    data = hostile.d2m_archive(classes=10, image_shape=(1, 28, 28), samples_per_class=10_000_000)  # Fashion-MNIST's
    assert len(data) < 1000
    cap = default_draw_cap(len(data), 10, (1, 28, 28))
    assert cap == 2 and len(D3Dataset(data)) == 10 * cap  # 64 × its IPC-equivalent of 0.02, rounded up
    with pytest.raises(D3LimitError, match="drawing 100,000,000 images"):
        D3Dataset(data, samples_per_class=10_000_000)
    assert len(D3Dataset(data, samples_per_class=3)) == 30  # a user's own small draw still works
    assert verify_archive(data).ok


def test_a_pixel_archive_of_no_images_and_a_huge_grid_are_refused():
    empty = hostile.pixel_archive(classes=100, image_shape=(3, 4096, 4096), per_class=0)
    assert len(empty) < 1000
    with pytest.raises(D3FormatError, match="N ≥ 1"):
        D3Dataset(empty)
    assert not verify_archive(empty).ok
    # the grid's canvas is checked before it is allocated: 100 rows of 4096-pixel images
    big = types.SimpleNamespace(
        image_shape=(3, 4096, 4096), classes=[str(i) for i in range(100)], labels=torch.arange(100), images=None
    )
    with pytest.raises(D3LimitError, match="--max-grid-pixels"):
        grid_image(big)
    small = D3Dataset(hostile.pixel_archive(classes=3, image_shape=(1, 8, 8)))
    with pytest.raises(D3LimitError, match="`grid_columns`"):
        grid_image(small, max_pixels=100)
    assert grid_image(small).size == (12, 32)


def test_a_wide_decoder_at_a_megapixel_is_refused_by_its_multiply_adds():
    data = hostile.d3_archive(
        classes=1, image_shape=(1, 1024, 1024), priors_per_class=1, decoder_width=256, soft_labels=False
    )
    assert len(data) < 3000
    result = verify_archive(data)
    assert result.failure[0] == "decode budget" and "multiply-adds" in result.failure[1]
    raised = DecodeLimits(max_macs_per_image=10**13, max_bytes=1)
    with pytest.raises(D3LimitError, match="max_bytes"):  # raising one limit leaves the others in force
        D3Dataset(data, limits=raised)


def test_a_draws_sampling_noise_counts_against_max_macs():
    # fuzz finding 2026-12-07: 100 000 draws of a tiny generator with 64 noise values an image counted the
    # 4 096-multiply-add floor an image, yet spent most of its time computing the noise
    from d3codec.format.limits import MIN_MACS_PER_IMAGE, NOISE_VALUE_MACS

    data = hostile.d2m_archive(classes=1, image_shape=(3, 1, 1), noise_dim=64, width=4)
    tight = DecodeLimits(max_macs=1 << 31)
    with pytest.raises(D3LimitError, match="max_macs") as error:
        D3Dataset(data, samples_per_class=200_000, limits=tight)
    per_image = error.value.value // 200_000
    assert per_image >= 64 * NOISE_VALUE_MACS > MIN_MACS_PER_IMAGE
    assert len(D3Dataset(data, samples_per_class=1000, limits=tight)) == 1000


def test_a_million_one_pixel_images_count_their_fixed_work_and_the_grid_reads_the_labels_once():
    # fuzz finding 2026-12-05: 1 000 classes × 1 000 draws of 1 × 1 images passed max_macs at 768 multiply-adds
    # an image, took seconds to decode, and the grid scanned the million labels once per class
    from d3codec.format.limits import MIN_MACS_PER_IMAGE

    data = hostile.d3_archive(classes=1000, image_shape=(1, 1, 1), priors_per_class=1, soft_labels=False)
    tight = DecodeLimits(max_macs=1 << 31)
    with pytest.raises(D3LimitError, match="max_macs") as error:
        D3Dataset(data, samples_per_class=1000, limits=tight)
    assert error.value.value == 1000 * 1000 * MIN_MACS_PER_IMAGE
    assert len(D3Dataset(data, samples_per_class=3, limits=tight)) == 3000
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(1000).repeat(3)[torch.randperm(3000, generator=gen)]  # classes interleaved
    mixed = types.SimpleNamespace(
        image_shape=(1, 1, 1),
        classes=[str(c) for c in range(1000)],
        labels=labels,
        images=torch.rand(3000, 1, 1, 1, generator=gen),
    )
    grid = torch.tensor(np.array(grid_image(mixed, pad=0)), dtype=torch.long).view(1000, 3)  # (H, W) grey pixels
    for cl in (0, 517, 999):  # row c: class c's images in the order they come
        want = mixed.images[mixed.labels == cl].flatten()
        assert torch.equal(grid[cl], (want.clamp(0, 1) * 255).round().to(torch.uint8).long())


def test_a_users_samples_per_class_is_bounded_too():
    data = hostile.d3_archive(classes=10, image_shape=(1, 28, 28))  # Fashion-MNIST's shape: 3·10^7 images, 94 GB
    with pytest.raises(D3LimitError, match="max_bytes=N in Python"):
        D3Dataset(data, samples_per_class=3 * 10**6)
    assert len(D3Dataset(data, samples_per_class=10**3, max_bytes=10**8)) == 10_000
    with pytest.raises(D3LimitError):
        D3Dataset(data, samples_per_class=10**3, max_bytes=10**5)
    with pytest.raises(ValueError, match="positive integer"):
        D3Dataset(data, samples_per_class=0)


# -- malformed values: D3FormatError, never another exception ----------------------------------


@pytest.mark.parametrize(
    "builder,field", [(hostile.d2m_archive, '"noise_dim":3'), (hostile.d3_archive, '"latent_dim":3')]
)
def test_numbers_that_overflow_are_refused(builder, field, tmp_path):
    data = builder()
    from d3codec.format.container import D3Reader

    with D3Reader(data) as r:
        text = r.read_bytes("meta").decode()
    assert field in text
    bad = hostile.with_meta_text(data, text.replace(field, field.split(":")[0] + ":1e400"))
    with pytest.raises(D3FormatError, match="overflows"):
        D3Dataset(bad)
    assert not verify_archive(bad).ok
    path = tmp_path / "o.d3"
    path.write_bytes(bad)
    one_line_refusal(run("expand", path, "-o", tmp_path / "x"), "overflows")
    one_line_refusal(run("verify", path), "overflows")


def test_duplicate_keys_and_integers_written_as_floats_are_refused():
    data = hostile.d2m_archive()
    from d3codec.format.container import D3Reader

    with D3Reader(data) as r:
        text = r.read_bytes("meta").decode()
    with pytest.raises(D3FormatError, match="appears twice"):
        D3Dataset(hostile.with_meta_text(data, text.replace('"noise_dim":3', '"noise_dim":3,"noise_dim":4')))
    with pytest.raises(D3FormatError, match="must be an integer"):
        D3Dataset(hostile.with_meta_text(data, text.replace('"noise_dim":3', '"noise_dim":3.0')))


@pytest.mark.parametrize("side", [1, 2, 4])
def test_a_teacher_for_tiny_images_is_refused(side):
    with pytest.raises(D3FormatError, match="cannot run|missing|shape"):
        D3Dataset(hostile.d2m_archive(image_shape=(1, side, side), teacher_width=4))


def test_merge_of_parts_with_hostile_budgets_is_refused(tmp_path):
    a, b = tmp_path / "a.d3", tmp_path / "b.d3"
    a.write_bytes(hostile.d3_archive(ds={**hostile.dataset(2), "classes": ["x", "y"]}))
    from d3codec.format.container import D3Reader

    with D3Reader(hostile.d3_archive()) as r:
        text = r.read_bytes("meta").decode()
    b.write_bytes(hostile.with_meta_text(hostile.d3_archive(), text.replace('"bytes":1000000000', '"bytes":[1,2]')))
    with pytest.raises(D3FormatError, match="budget.bytes"):
        merge_archives([a, b], tmp_path / "m.d3")
    federated = text.replace('"format":"d3"', '"federated":{"budget":1e400},"format":"d3"')
    b.write_bytes(hostile.with_meta_text(hostile.d3_archive(), federated))
    with pytest.raises(D3FormatError, match="overflows"):
        merge_archives([a, b], tmp_path / "m.d3")
    b.write_bytes(
        hostile.with_meta_text(
            hostile.d3_archive(), text.replace('"format":"d3"', '"federated":{"budget":"x"},"format":"d3"')
        )
    )
    a.write_bytes(
        hostile.with_meta_text(
            hostile.d3_archive(ds={**hostile.dataset(2), "classes": ["x", "y"]}),
            text.replace('"classes":["c0","c1"]', '"classes":["x","y"]').replace(
                '"format":"d3"', '"federated":{"budget":"x"},"format":"d3"'
            ),
        )
    )
    with pytest.raises(D3FormatError, match="federated.budget"):
        merge_archives([a, b], tmp_path / "m.d3")
    one_line_refusal(run("merge", a, b, "-o", tmp_path / "m.d3"), "federated.budget")
    assert not (tmp_path / "m.d3").exists()


def test_the_spec_rules_on_values_dtypes_and_flags():
    ok = hostile.pixel_archive()
    assert len(D3Dataset(ok)) == 2
    from d3codec.format.container import D3Reader

    with D3Reader(ok) as r:
        text = r.read_bytes("meta").decode()
    infinite = hostile.with_meta_text(ok, text.replace('"std":[0.25]', '"std":[1e400]'))
    cases = {
        "overflows": infinite,
        "must be critical": hostile.pixel_archive(meta_critical=False),
        "uint8 or int32": hostile.pixel_archive(labels_dtype=torch.int64),
        "float32 'range'": hostile.pixel_archive(range_dtype=torch.float16),
        "negative or non-finite": hostile.pixel_archive(soft_labels=torch.tensor([[float("nan"), 1.0], [0.5, 0.5]])),
        "negative or non-finite ": hostile.pixel_archive(soft_labels=torch.tensor([[-0.5, 1.5], [0.5, 0.5]])),
        "sum to 1": hostile.pixel_archive(soft_labels=torch.tensor([[0.2, 0.2], [0.5, 0.5]])),
    }
    for message, data in cases.items():
        with pytest.raises(D3FormatError, match=message.strip()):
            D3Dataset(data)
        result = verify_archive(data)
        assert not result.ok and message.strip() in result.failure[1], (message, result.failure)
    assert verify_archive(hostile.pixel_archive(soft_labels=torch.tensor([[0.3, 0.7], [0.5, 0.5]]))).ok


def test_d3_soft_labels_must_be_probabilities():
    from d3codec.format.container import Content, D3Reader, Section, encode_archive

    data = hostile.d3_archive()
    with D3Reader(data) as r:
        sections = [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]
    sections[-1] = Section.tensors("prior_labels", {"g0": torch.full((2, 2, 2), 0.7, dtype=torch.float16)})
    with pytest.raises(D3FormatError, match="sum to 1"):
        D3Dataset(encode_archive(sections))


# -- nothing from an archive reaches a terminal raw -----------------------------------------------


def test_info_and_verify_escape_control_characters_and_cut_long_strings(tmp_path):
    path = tmp_path / "t.d3"
    name = "\x1b]0;owned\x07\x1b[2J\u202e" + "n" * (15 << 20)
    path.write_bytes(hostile.pixel_archive(ds={**hostile.dataset(2, (1, 4, 4)), "name": name}))
    for args in (("info", path), ("verify", path)):
        result = run(*args)
        assert result.exit_code == 0, result.output[:500]
        assert len(result.output) < 20_000 and f"{len(name)} characters" in result.output
        assert not any(ord(ch) < 32 and ch != "\n" or 0x7F <= ord(ch) < 0xA0 or ch == "\u202e" for ch in result.output)
    info = json.loads(run("info", path, "--json").output)  # complete for scripts, JSON-escaped
    assert info["meta"]["dataset"]["name"] == name


def test_a_budget_that_is_not_an_integer_is_refused_before_it_is_printed(tmp_path):
    from d3codec.format.container import D3Reader

    with D3Reader(hostile.pixel_archive()) as r:
        text = r.read_bytes("meta").decode()
    path = tmp_path / "b.d3"
    path.write_bytes(
        hostile.with_meta_text(hostile.pixel_archive(), text.replace('"bytes":1000000000', '"bytes":"\\u001b[2J"'))
    )
    line = one_line_refusal(run("info", path), "budget.bytes")
    assert "\x1b" not in line


# -- command-line input, checked before any work ----------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--ipc", "nan"), "not a finite number"),
        (("--ipc", "inf"), "not a finite number"),
        (("--ipc", "-1"), "above 0"),
        (("--iterations", "0"), "--iterations"),
        (("--iterations", "-3"), "--iterations"),
        (("--budget", str(1 << 40)), "--budget"),
        (("--device", "bogus"), "unknown device"),
        (("--device", "cuda:7"), "cuda:7"),
        (("--priors-per-class", "0"), "--priors-per-class"),
        (("--seed", "-1"), "--seed"),
    ],
)
def test_compress_options_are_checked_before_the_data_loads(args, needle, tmp_path):
    base = {"--ipc": "1"} if "--ipc" not in args and "--budget" not in args else {}
    flat = [x for kv in base.items() for x in kv]
    result = run("compress", "d3", tmp_path / "no-such-dataset", *flat, *args, "-o", tmp_path / "x.d3")
    line = one_line_refusal(result, needle)
    assert "no-such-dataset" not in line  # the option was refused first


def test_an_ipc_too_large_is_refused_before_planning(image_folder, tmp_path):
    line = one_line_refusal(
        run("compress", image_folder, "--resolution", 16, "--ipc", "1e9", "-o", tmp_path / "x.d3"), "over the largest"
    )
    assert "a budget of 9216000000000 bytes" in line and not (tmp_path / "x.d3").exists()  # 1e9 · 3 · 3·16·16 · 4


def test_eval_and_expand_options_are_checked(tmp_path):
    path = tmp_path / "a.d3"
    path.write_bytes(hostile.d3_archive())
    one_line_refusal(run("expand", path, "-o", tmp_path / "o", "--samples-per-class", "0"), "--samples-per-class")
    one_line_refusal(run("expand", path, "-o", tmp_path / "o", "--device", "cuda"), "CUDA")
    one_line_refusal(run("eval", path, "--epochs", "0"), "--epochs")
    one_line_refusal(run("expand", path, "-o", tmp_path / "o", "--max-bytes", "1000"), "--max-bytes")


def test_a_class_name_too_long_for_a_file_name_still_expands(tmp_path):
    ds = hostile.dataset(2, (1, 4, 4))
    ds["classes"] = ["x" * 5000, "é" * 5000]
    path = tmp_path / "long.d3"
    path.write_bytes(hostile.pixel_archive(ds=ds))
    result = run("expand", path, "-o", tmp_path / "png")
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(folders) == 2 and all(len(f.encode()) <= 130 for f in folders)
    assert sum(1 for _ in (tmp_path / "png").rglob("*.png")) == 2


def test_every_refusal_is_a_d3error_with_a_named_fix():
    assert issubclass(D3LimitError, D3FormatError) and issubclass(D3FormatError, D3Error)
    with pytest.raises(ValueError, match="positive integer"):
        DecodeLimits().with_overrides(max_bytes=0)
