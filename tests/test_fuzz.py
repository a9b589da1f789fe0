"""A CI-sized fuzz run: mutated archives of every method read correctly or raise D3FormatError."""

import fuzz_archives
import pytest


@pytest.fixture(scope="module")
def seeds_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    fuzz_archives.seed_archives(folder)
    return folder


def test_two_thousand_mutated_archives_give_nothing_but_d3formaterror(seeds_folder):
    seeds = fuzz_archives.seed_archives(seeds_folder)
    assert len(seeds) == 8  # every method and storage kind
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
    methods = set()
    for _ in range(40):
        data, opts = fuzz_archives.method_layer(rng)
        methods.add(fuzz_archives.json.loads(fuzz_archives._meta_text(data))["method"])
        assert opts["operation"] in ("dataset", "verify", "grid", "merge")
    assert methods == {"pixel", "d3", "d2m"}
