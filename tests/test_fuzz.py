"""A CI-sized fuzz run: mutated archives of every method, checkpoints, users' network files and folder trees
read correctly or raise D3FormatError (D3Error where the harness says so)."""

import fuzz_archives
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The oracle's CASE_SECONDS is wall time: read on one thread, as the fuzz script does, so that a
    case's time does not swing with another job's load on the cores (two threads on a busy 2-core machine
    took 2.5 times as long on a 100 000-image D2M draw)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def seeds_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    fuzz_archives.seed_archives(folder)
    return folder


def test_two_thousand_mutated_archives_give_nothing_but_d3formaterror(seeds_folder):
    seeds = fuzz_archives.seed_archives(seeds_folder)
    assert len(seeds) == 12  # every method and storage kind, formations, a labeller, top-k labels
    before = dict(fuzz_archives.OUTCOMES)
    fuzz_archives.BY_KIND.clear()
    findings = fuzz_archives.run(2000, seed=7, folder=seeds_folder, log=lambda m: None)
    assert findings == []
    read = fuzz_archives.OUTCOMES["read"] - before["read"]
    refused = fuzz_archives.OUTCOMES["refused"] - before["refused"]
    unwritable = fuzz_archives.OUTCOMES["unwritable"] - before["unwritable"]
    assert read + refused + unwritable == 2000 and unwritable < 20
    assert read > 100 and refused > 700  # both outcomes are exercised
    layer = fuzz_archives.BY_KIND["method-layer"]  # consistent hostile archives: some decode, most are refused
    assert layer["read"] > 20 and layer["refused"] > 200
    for family in ("checkpoint", "user file", "folder"):  # each new surface gets its share (5 %), both outcomes
        tally = fuzz_archives.BY_KIND[family]
        assert tally["read"] + tally["refused"] > 50, (family, tally)
        assert tally["read"] > 5 and tally["refused"] > 20, (family, tally)


def test_the_oracle_reports_other_exceptions_hangs_and_changed_data(seeds_folder, monkeypatch):
    original = fuzz_archives.seed_archives(seeds_folder)["dm-uint8"]

    def crash(data, opts=None):
        raise KeyError("params")

    monkeypatch.setattr(fuzz_archives, "read_like_a_user", crash)
    assert "KeyError" in fuzz_archives.check_case(original, original, False)

    def hang(data, opts=None):
        while True:
            pass

    monkeypatch.setattr(fuzz_archives, "read_like_a_user", hang)
    assert "no answer within" in fuzz_archives.check_case(original, original, False, seconds=0.2)

    calls = []

    def differs(data, opts=None):
        calls.append(data)
        return (fuzz_archives.torch.zeros(1) if data == original else fuzz_archives.torch.ones(1)), None

    monkeypatch.setattr(fuzz_archives, "read_like_a_user", differs)
    finding = fuzz_archives.check_case(original, original + b"", True)
    assert finding is None  # unchanged bytes: nothing to compare
    assert "read as different data" in fuzz_archives.check_case(original, b"x" + original[1:], True)

    def hog(data, opts=None):  # memory held while decoding counts, even when the read then succeeds
        block = bytearray(fuzz_archives.CASE_MEMORY_BYTES + (64 << 20))
        block[::4096] = b"x" * len(block[::4096])
        return None, None, None

    monkeypatch.setattr(fuzz_archives, "read_like_a_user", hog)
    if fuzz_archives._reset_peak_rss():  # Linux: the kernel's high-water mark can be reset
        assert "peak memory grew" in fuzz_archives.check_case(original, original, False)


def test_the_method_layer_writes_consistent_hostile_archives():
    import random

    rng = random.Random(3)
    methods, formations, labellers, top_k = set(), 0, 0, 0
    for _ in range(80):
        try:
            data, opts = fuzz_archives.method_layer(rng)
        except ValueError:  # more values than the harness writes: run() counts it as unwritable
            continue
        meta = fuzz_archives.json.loads(fuzz_archives._meta_text(data))
        methods.add(meta["method"])
        assert opts["operation"] in ("dataset", "verify", "grid", "merge")
        params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
        formations += "formation" in params
        labellers += "labeller" in meta or "labeller" in data.decode("latin-1")
        top_k += any(isinstance(g, dict) and "label_top_k" in g for g in params.get("groups") or [])
    assert methods == {"pixel", "d3", "d2m"}
    assert formations > 3 and labellers > 3 and top_k > 3  # the surfaces added since the harness was written


def test_the_new_families_write_what_they_say(tmp_path):
    import os
    import random

    from safetensors import safe_open
    from safetensors.torch import save

    rng = random.Random(5)
    operations = set()
    for _ in range(30):
        data, opts = fuzz_archives.checkpoint_case(rng) if rng.random() < 0.5 else fuzz_archives.user_file_case(rng)
        operations.add(opts["operation"])
        assert data[:8] and len(data) < 8 << 20  # a safetensors file (perhaps with a damaged header), small
    assert operations == {"checkpoint", "teacher", "generator"}
    tensors, meta = fuzz_archives.checkpoint_base()
    assert meta["iteration"] == "5" and any(k.startswith("opt.adam.") for k in tensors) and "rng.torch" in tensors
    path = tmp_path / "c.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
    assert fuzz_archives.read_like_a_user(path.read_bytes(), {"operation": "checkpoint"})[0].item() == 5

    recipe = {
        "classes": ["a", "b"],
        "images": [[0, "0.png", "png-RGB", [8, 8]], [1, "0.jpg", "jpg-L", [12, 12]]],
        "hostile": [
            [what, i % 2, i]
            for i, what in enumerate(fuzz_archives.FOLDER_HOSTILE)
            if not what.startswith(("near-limit", "no-class", "class-link"))
        ],
        "workers": 0,
        "repeat": 1,
    }
    root = fuzz_archives.build_tree(tmp_path / "t", recipe)
    huge = next(root.glob("*/huge[0-9]*.png"))  # 20 000 × 20 000 pixels in a few KB
    assert os.path.islink(root / "a" / "loop0") and huge.stat().st_size < 1 << 20
    with pytest.raises(fuzz_archives.D3FormatError):  # an empty, a truncated, a lying file: refused in one line
        fuzz_archives.read_like_a_user(b"", {"operation": "folder", "root": str(root), "workers": 0, "repeat": 1})
