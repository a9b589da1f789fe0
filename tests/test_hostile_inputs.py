"""Trust round 3 (issue 33): what a stranger's archive, file or folder can make d3codec do.

Each test is one kind of failure the issue found, with its quoted example where it can be built small:
every one is refused in one line (a D3Error, or exit status 1 with no traceback) or bounded, before
anything large is allocated. Archives are hand-made with valid checksums (tests/hostile.py).
"""

import json
import os
import resource

import hostile
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from d3codec import D3Dataset
from d3codec.cli.main import main
from d3codec.data.sources import archive_dataset, load_dataset
from d3codec.decode.labeller import labeller_parts
from d3codec.decode.verify import verify_archive
from d3codec.errors import D3DatasetError, D3Error, D3FormatError, D3LimitError
from d3codec.format.container import Section, encode_archive
from d3codec.format.limits import DEFAULT_LIMITS
from d3codec.nn.models import ConvNet


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_refusal(result, *needles):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and lines[-1].startswith(("Error:", "FAILED")), result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- an archive names no local path ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/proc", "/etc", "../../etc", ".", "fashion-mnist/../../etc"])
def test_an_archive_naming_a_local_path_is_not_read_as_one(tmp_path, name):
    path = tmp_path / "a.d3"
    path.write_bytes(hostile.pixel_archive(classes=2, image_shape=(1, 8, 8), ds=hostile.dataset(2, (1, 8, 8), name)))
    line = one_line_refusal(run("eval", path, "--epochs", 1, "--runs", 1, "--device", "cpu"), "--dataset")
    assert "passwd" not in line and "self" not in line  # nothing of the folder it names was listed
    with pytest.raises(D3DatasetError):  # not even under a root the user gives: a label is one plain name
        archive_dataset(name, tmp_path)


def test_a_folder_dataset_is_found_only_under_a_root_the_user_gives(tmp_path):
    folder = tmp_path / "root" / "shapes"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), 40 * i).save(folder / c / f"{i}.png")
    with pytest.raises(D3DatasetError, match="`data_root`"):
        archive_dataset("shapes")
    real = archive_dataset("shapes", tmp_path / "root", resolution=8)
    assert real.classes == ["a", "b"] and real.image_shape == (3, 8, 8)


# -- finite or refused ------------------------------------------------------------------------------------------


def _pixel_codes(codes: torch.Tensor, formation: dict, image_shape=(1, 16, 16)) -> bytes:
    k = 2
    n = codes.shape[0]
    meta = hostile.meta("pixel", hostile.dataset(k, image_shape), {"objective": "dm", "formation": formation})
    tensors = {"images": codes, "labels": torch.arange(k).repeat_interleave(n // k).to(torch.uint8)}
    return encode_archive([Section.json("meta", meta), Section.tensors("images", tensors)])


def _labelled(data: bytes, change) -> bytes:
    """A pixel archive with a width-4 int8 labeller whose tensors ``change`` edits."""
    from d3codec.format.container import Content, D3Reader

    described, section = labeller_parts(ConvNet(1, 2, 8, width=4), 1.0, "int8")
    with D3Reader(data) as r:
        sections = [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]
        meta = r.read_json("meta")
    sections[0] = Section.json("meta", {**meta, "labeller": described})
    return hostile.with_tensors(encode_archive(sections + [section]), "labeller", change)


@pytest.mark.parametrize(
    "case", ["dct codes near 3e38", "labeller scale NaN", "d2m teacher scale NaN", "std 1e-50", "mean 1e39"]
)
def test_values_that_are_not_numbers_fail_verify(case):
    if case == "dct codes near 3e38":
        data = _pixel_codes(torch.full((2, 1, 4, 4), 3e38), {"kind": "dct", "factor": 4})
        why = "not finite"
    elif case == "labeller scale NaN":
        data = _labelled(
            hostile.pixel_archive(classes=2, image_shape=(1, 8, 8)),
            lambda t: t["classifier.weight.scale"].fill_(float("nan")),
        )
        why = "not finite"
    elif case == "d2m teacher scale NaN":
        data = hostile.with_tensors(
            hostile.d2m_archive(classes=2, image_shape=(1, 8, 8), teacher_width=4, dtype="int8"),
            "teacher",
            lambda t: t["features.0.weight.scale"].fill_(float("nan")),
        )
        why = "not finite"
    else:
        key, value = ("std", 1e-50) if case == "std 1e-50" else ("mean", 1e39)
        data = hostile.pixel_archive(
            classes=2, image_shape=(1, 8, 8), ds={**hostile.dataset(2, (1, 8, 8)), key: [value]}
        )
        why = f"dataset.{key}"
    result = verify_archive(data)
    assert not result.ok and why in result.failure[1], result.failure
    with pytest.raises(D3FormatError, match=why.replace(".", r"\.")):
        D3Dataset(data)


# -- limits that count what is allocated --------------------------------------------------------------------------


def test_top_k_labels_are_never_spread_into_a_dense_table():
    hostile.MAX_VALUES, kept = 10**9, hostile.MAX_VALUES
    try:  # 2 000 classes, 800 priors each, top 1: the dense (K, P, K) float32 table would be 12.8 GB
        data = hostile.d3_archive(
            classes=2000, priors_per_class=800, latent_dim=1, label_top_k=1, image_shape=(1, 8, 8), decoder_width=4
        )
    finally:
        hostile.MAX_VALUES = kept
    assert len(data) < 6000
    before = peak_rss_mib()
    ds = D3Dataset(data)
    assert len(ds) == 2000 and ds.soft_labels.shape == (2000, 2000)  # a 3 KB file draws one image a class
    assert torch.allclose(ds.soft_labels.sum(1), torch.ones(2000))
    assert peak_rss_mib() - before < 1024
    with pytest.raises(D3LimitError, match="max_bytes"):  # 2 000 a class, with dense soft labels: 32 GB
        D3Dataset(data, samples_per_class=2000)


def test_a_small_dct_archive_of_16x_codes_is_refused_by_its_decoded_size():
    n = 1600  # codes of 16 × 16 images at factor 16: 1 value each; the images would take 16 GiB and more
    data = _pixel_codes(
        torch.zeros(n, 3, 256, 256, dtype=torch.uint8)[:, :, :16, :16].contiguous(),
        {"kind": "dct", "factor": 16},
        image_shape=(3, 4096, 4096),
    )
    with pytest.raises(D3LimitError, match="max_bytes"):
        D3Dataset(data)
    assert verify_archive(data).failure[0] == "decode budget"


def test_a_panic_in_safetensors_is_one_format_error(monkeypatch):
    import safetensors.torch

    class PanicException(BaseException):  # what pyo3 raises for a Rust panic: not an Exception
        pass

    def panic(data):
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    monkeypatch.setattr(safetensors.torch, "load", panic)
    with pytest.raises(D3FormatError, match="PanicException"):
        D3Dataset(hostile.pixel_archive())
    monkeypatch.setattr(safetensors.torch, "save", lambda *a, **k: panic(None))
    with pytest.raises(ValueError, match="safetensors cannot store"):
        Section.tensors("images", {"x": torch.zeros(2)})


# -- costs with no bound -------------------------------------------------------------------------------------------


def test_a_bptt_archive_declaring_100000_replay_steps_is_refused(tmp_path):
    from conftest import make_tiny_real

    from d3codec.encode.pipeline import compress
    from d3codec.methods.pixel import BPTTEncoder

    out = tmp_path / "b.d3"
    compress(
        make_tiny_real(),
        out,
        encoder=BPTTEncoder.from_options("fast", iterations=1, real_per_class=4, init="random", images_per_class=1),
        budget=8_000,
        progress=False,
    )
    from d3codec.format.container import Content, D3Reader

    with D3Reader(out.read_bytes()) as r:
        sections = [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]
        meta = r.read_json("meta")
    meta["params"].update(inner_steps=1, inner_epochs=100_000)
    sections[0] = Section.json("meta", meta)
    sections = [
        Section.tensors("schedule", {"step_sizes": torch.full((100_000,), 0.01)}) if s.name == "schedule" else s
        for s in sections
    ]
    hostile_path = tmp_path / "h.d3"
    hostile_path.write_bytes(encode_archive(sections))
    assert hostile_path.stat().st_size < 2000
    with pytest.raises(D3LimitError, match="max_replay_macs"):
        D3Dataset(hostile_path)
    one_line_refusal(run("eval", hostile_path, "--runs", 1, "--device", "cpu"), "--max-replay-macs")
    trusted = DEFAULT_LIMITS.with_overrides(max_replay_macs=1 << 50)  # a user who trusts it can still read it
    assert D3Dataset(hostile_path, limits=trusted).schedule.epochs == 100_000


def test_verify_of_a_d3_archive_declaring_a_million_priors_per_class_is_bounded():
    hostile.MAX_VALUES, kept = 10**9, hostile.MAX_VALUES
    try:
        data = hostile.d3_archive(classes=10, priors_per_class=1_000_000, latent_dim=8, soft_labels=False)
    finally:
        hostile.MAX_VALUES = kept
    result = verify_archive(data)  # its priors and their ordering are counted against max_parameters
    assert result.failure[0] == "decode budget" and "max_parameters" in result.failure[1]


# -- files a user passes in ------------------------------------------------------------------------------------------


def _state_file(path, tensors: dict, metadata: dict | None = None):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("case", ["width 50000", "width 0", "0-d tensors", "NaN weights", "classes header"])
def test_a_teacher_or_labeller_file_is_checked_before_any_network_is_built(tmp_path, case):
    from d3codec.nn.teacher import load_teacher

    good = {k: v for k, v in ConvNet(1, 3, 16, width=4).state_dict().items()}
    tensors, metadata = dict(good), None
    if case == "width 50000":
        tensors = {"features.0.weight": torch.zeros(50_000, 1, 1, 1), "classifier.weight": torch.zeros(3, 1)}
    elif case == "width 0":
        tensors = {"features.0.weight": torch.zeros(0, 1, 3, 3), "classifier.weight": torch.zeros(3, 0)}
    elif case == "0-d tensors":
        tensors = {"features.0.weight": torch.tensor(1.0), "classifier.weight": torch.tensor(2.0)}
    elif case == "NaN weights":
        tensors["features.0.weight"] = torch.full_like(good["features.0.weight"], float("nan"))
    else:
        metadata = {"classes": "0,1,x"}
    path = _state_file(tmp_path / "t.safetensors", tensors, metadata)
    before = peak_rss_mib()
    with pytest.raises(D3Error, match="`teacher`"):
        load_teacher(path, (1, 16, 16), 3)
    assert peak_rss_mib() - before < 512
    line = one_line_refusal(
        run("compress", "dm", tmp_path / "nowhere", "--ipc", 1, "-o", tmp_path / "o.d3", "--labeller", path)
    )
    assert "Traceback" not in line


def test_a_generator_file_of_nan_weights_is_refused(tmp_path):
    from d3codec.methods.d2m.networks import ConditionalGenerator, load_generator

    state = ConditionalGenerator(3, 4, 2, 8, (1, 16, 16), "upconv-v2").state_dict()
    state = {k: torch.full_like(v, float("nan")) if k == "fc.weight" else v for k, v in state.items()}
    path = _state_file(tmp_path / "g.safetensors", state, {"architecture": "upconv-v2"})
    with pytest.raises(D3Error, match="not finite"):
        load_generator(path, 3, (1, 16, 16))


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda m: m.update(iteration="-1000000000"), "iteration"),
        (lambda m: m.update(iteration="1e9"), "iteration"),
        (lambda m: m.update(opt_groups=m["opt_groups"].replace('"lr":', '"lr":"x","_":')), "damaged"),
        (
            lambda m: m.update(
                opt_groups=json.dumps(
                    {k: [{**g, "lr": 1e308} for g in v] for k, v in json.loads(m["opt_groups"]).items()}
                )
            ),
            "lr",
        ),
    ],
)
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, edit, why):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from d3codec.encode.checkpoint import Checkpoint

    param = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    ckpt = Checkpoint(tmp_path / "c.safetensors", "test", "run")
    ckpt.save(5, {"x": param.detach()}, {"adam": opt}, torch.Generator())
    with safe_open(str(ckpt.path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    edit(meta)
    save_file(tensors, str(ckpt.path), metadata=meta)
    fresh = torch.optim.Adam([param], lr=0.1)
    with pytest.raises(D3Error, match=why) as error:
        ckpt.resume({"adam": fresh}, torch.Generator(), torch.device("cpu"), {"x": torch.zeros(3)})
    assert "\n" not in str(error.value)


# -- folder datasets that cannot hang --------------------------------------------------------------------------------


def _tree(root, per_class: int = 3):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (12, 12), 30 * i + (c == "b") * 100).save(root / c / f"{i}.png")
    return root


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and links")
def test_links_and_fifos_in_a_folder_dataset_are_not_followed(tmp_path):
    root = _tree(tmp_path / "t")
    os.symlink("..", root / "a" / "up")  # a loop
    os.symlink("/", root / "b" / "everything")
    os.mkfifo(root / "a" / "000.png")  # opening it would wait for a writer forever
    real = load_dataset(str(root), resolution=8, load_workers=0)
    assert real.classes == ["a", "b"] and len(real.train) == 6
    assert real.read_uint8(torch.arange(6)).shape == (6, 3, 8, 8)
    os.symlink(root / "a", root / "c")  # a class folder that is a link
    with pytest.raises(D3DatasetError, match="a class folder that is a link"):
        load_dataset(str(root), resolution=8, load_workers=0)


@pytest.mark.parametrize("size,why", [((20_000, 20_000), "pixels"), ((2_000_000, 1), "times apart")])
def test_huge_or_strip_images_are_refused_by_their_header_in_one_line(tmp_path, size, why):
    root = _tree(tmp_path / "t")
    Image.new("1", size).save(root / "a" / "big.png")  # a few hundred KB on disk
    real = load_dataset(str(root), resolution=8, load_workers=2)
    before = peak_rss_mib()
    with pytest.raises(D3DatasetError, match=why) as error:
        real.read_uint8(torch.arange(len(real.train)).repeat(10))  # in DataLoader workers: their error, one line
    assert "big.png" in str(error.value) and "\n" not in str(error.value) and "Traceback" not in str(error.value)
    assert peak_rss_mib() - before < 512


def test_a_folder_name_is_escaped_where_printed(tmp_path):
    with pytest.raises(D3DatasetError) as error:
        load_dataset(str(tmp_path / "evil\x1b[2Jname"))
    assert "\x1b" not in str(error.value) and "\\x1b" in str(error.value)


def test_a_plan_on_uniform_images_is_bounded_whatever_zstd_says():
    from d3codec.format.storage import stored_image_zeros
    from d3codec.methods.pixel.plan import MIN_COMPRESSION_RATIO, plan_pixel_storage

    def sections(n, dtype):
        return [
            Section.json("meta", {"format": "d3"}),
            Section.tensors("images", stored_image_zeros(2 * n, (1, 8, 8), 2, dtype)),
        ]

    raw = plan_pixel_storage(100_000, 2, (1, 8, 8), sections)
    planned = plan_pixel_storage(100_000, 2, (1, 8, 8), sections, compression_ratio=0.001)
    assert planned.images_per_class <= raw.images_per_class / MIN_COMPRESSION_RATIO + 2


# -- merge and the options --------------------------------------------------------------------------------------------


def test_merge_refuses_what_readers_would_refuse(tmp_path):
    from d3codec.methods.d3.merge import merge_archives

    paths = []
    for i in range(2):
        ds = {**hostile.dataset(2, (1, 8, 8)), "classes": [f"p{i}c{j}" for j in range(2)]}
        path = tmp_path / f"{i}.d3"
        path.write_bytes(
            hostile.d3_archive(classes=2, image_shape=(1, 8, 8), ds=ds, extra_meta={"budget": {"bytes": 3 * 2**60}})
        )
        paths.append(path)
    with pytest.raises(D3Error, match="refused by readers"):  # 6 · 2^60 bytes summed: past 2^62
        merge_archives(paths, tmp_path / "m.d3")
    assert not (tmp_path / "m.d3").exists()
    assert merge_archives(paths, tmp_path / "m.d3", budget=10**6).classes == 4
    many = {**hostile.dataset(100_000, (1, 8, 8)), "classes": [f"a{i}" for i in range(100_000)]}
    (tmp_path / "many.d3").write_bytes(
        hostile.d3_archive(
            classes=100_000,
            image_shape=(1, 8, 8),
            latent_dim=1,
            priors_per_class=1,
            decoder_width=1,
            soft_labels=False,
            ds=many,
            groups=100,
        )
    )
    with pytest.raises(D3Error, match="dataset.classes"):  # 100 002 classes: more than an archive may hold
        merge_archives([tmp_path / "many.d3", paths[0]], tmp_path / "m2.d3", budget=10**7)
    assert not (tmp_path / "m2.d3").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--budget", 4294967296), "--budget"),
        (("--ipc", 1, "--real-per-class", 10**9), "--real-per-class"),
        (("--ipc", 1, "--resolution", 1), "--resolution"),
    ],
)
def test_options_past_what_the_code_can_honour_are_refused_before_work(tmp_path, args, needle):
    line = one_line_refusal(run("compress", "dm", tmp_path / "nowhere", "-o", tmp_path / "o.d3", *args), needle)
    assert "range" in line and not (tmp_path / "o.d3").exists()


def test_a_labeller_on_images_too_small_for_it_is_refused_in_one_line():
    from d3codec.encode.interface import DatasetSpec
    from d3codec.encode.labelled import LabelledEncoder, LabellerConfig
    from d3codec.methods import get_method

    encoder = LabelledEncoder(get_method("dm").make_encoder("smoke"), LabellerConfig(width=8))
    spec = DatasetSpec("x", ("a", "b"), (1, 4, 4), (0.5,), (0.25,))
    with pytest.raises(D3Error, match="at least 8"):
        encoder.plan(spec, 100_000, lambda params: {"format": "d3", "params": params})


@pytest.mark.parametrize(
    "failure",
    [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")],
)
def test_an_allocation_that_fails_within_the_limits_is_one_limit_error(monkeypatch, failure):
    import d3codec.decode.dataset

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(d3codec.decode.dataset, "_decode", fail)
    with pytest.raises(D3LimitError, match="ran out of memory"):
        D3Dataset(hostile.pixel_archive())
    assert not verify_archive(hostile.pixel_archive()).ok


@pytest.mark.parametrize("method", ["dm", "bptt", "d3"])
def test_planning_the_largest_budget_builds_no_placeholder_archive(method):
    from d3codec.encode.interface import DatasetSpec
    from d3codec.encode.pipeline import MAX_BUDGET_BYTES
    from d3codec.format.meta import base_meta
    from d3codec.methods import get_method

    spec = DatasetSpec("x", tuple(f"c{i}" for i in range(10)), (1, 28, 28), (0.5,), (0.25,))
    encoder = get_method(method).make_encoder("fast")
    before = peak_rss_mib()
    plan = encoder.plan(
        spec,
        MAX_BUDGET_BYTES,
        lambda params: {**base_meta(spec, method, MAX_BUDGET_BYTES, None, 0, "2026-12-07T00:00:00Z"), "params": params},
    )
    assert peak_rss_mib() - before < 256  # a 2 GiB archive's placeholders were counted, not made
    assert plan.max_bytes <= MAX_BUDGET_BYTES and plan.max_bytes > 0.99 * MAX_BUDGET_BYTES


def test_a_section_that_cannot_be_loaded_in_the_address_space_left_is_one_limit_error(monkeypatch):
    import d3codec.format.container

    monkeypatch.setattr(
        d3codec.format.container, "address_space_left", lambda extra: False
    )  # as under a tight ulimit -v
    with pytest.raises(D3LimitError, match="address space"):  # not a panic of safetensors on a failed allocation
        D3Dataset(hostile.pixel_archive())
    assert verify_archive(hostile.pixel_archive()).failure[0] == "decode budget"


def test_finite_checks_in_chunks_agree_with_torch():
    from d3codec.format.limits import all_finite

    x = torch.rand(3, 1000)
    assert all_finite(x, chunk=7) and all_finite(torch.arange(5))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[2, 999] = bad
        assert not all_finite(y, chunk=7)
