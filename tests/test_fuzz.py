"""A CI-sized fuzz run: mutated archives of every method read correctly or raise D3FormatError."""

import fuzz_archives
import pytest


@pytest.fixture(scope="module")
def seeds_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    fuzz_archives.seed_archives(folder)
    return folder


def test_three_thousand_mutated_archives_give_nothing_but_d3formaterror(seeds_folder):
    seeds = fuzz_archives.seed_archives(seeds_folder)
    assert len(seeds) == 8  # every method and storage kind
    before = dict(fuzz_archives.OUTCOMES)
    findings = fuzz_archives.run(3000, seed=7, folder=seeds_folder, log=lambda m: None)
    assert findings == []
    read = fuzz_archives.OUTCOMES["read"] - before["read"]
    refused = fuzz_archives.OUTCOMES["refused"] - before["refused"]
    unwritable = fuzz_archives.OUTCOMES["unwritable"] - before["unwritable"]
    assert read + refused + unwritable == 3000 and unwritable < 30
    assert read > 100 and refused > 1000  # both outcomes are exercised


def test_the_oracle_reports_other_exceptions_hangs_and_changed_data(seeds_folder, monkeypatch):
    original = fuzz_archives.seed_archives(seeds_folder)["dm-uint8"]

    def crash(data):
        raise KeyError("params")
    monkeypatch.setattr(fuzz_archives, "read_like_a_user", crash)
    assert "KeyError" in fuzz_archives.check_case(original, original, False)

    def hang(data):
        while True:
            pass
    monkeypatch.setattr(fuzz_archives, "read_like_a_user", hang)
    assert "no answer within" in fuzz_archives.check_case(original, original, False, seconds=0.2)

    calls = []

    def differs(data):
        calls.append(data)
        return (fuzz_archives.torch.zeros(1) if data == original else fuzz_archives.torch.ones(1)), None
    monkeypatch.setattr(fuzz_archives, "read_like_a_user", differs)
    finding = fuzz_archives.check_case(original, original + b"", True)
    assert finding is None  # unchanged bytes: nothing to compare
    assert "read as different data" in fuzz_archives.check_case(original, b"x" + original[1:], True)
