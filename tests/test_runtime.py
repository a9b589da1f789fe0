"""d3codec.util.runtime: freed large buffers are kept and reused, and a user's own malloc settings stand.

Each case runs in a fresh interpreter: mallopt changes the whole process, once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Allocate, fill and free a 64 MiB tensor ROUNDS times; report the minor page faults of each round.
# A buffer that malloc kept is reused without faults; a fresh mmap faults in every one of its pages.
# torch aligns large buffers to 2 MiB, so where the freed block sits against that alignment (random
# under ASLR) the heap may grow by a buffer a round for the first rounds before one fits: measured
# 2026-12-06, 1 to 9 rounds before every later one was fault-free, in six runs.
ROUNDS = 20
PROBE = """
import json, resource, torch
from d3codec.util.runtime import keep_freed_memory
outcome = keep_freed_memory()
again = keep_freed_memory()
faults = []
for _ in range(ROUNDS):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 << 20, dtype=torch.float32)
    t.fill_(1.0)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"outcome": outcome, "again": again, "faults": faults}))
"""
PAGES = (64 << 20) // 4096  # pages of one 64 MiB buffer


def probe(**env: str) -> dict:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "D3CODEC_MALLOC")
    }
    done = subprocess.run(
        [sys.executable, "-c", f"ROUNDS = {ROUNDS}" + PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_buffers_are_reused_without_page_faults_and_system_malloc_is_kept_on_request():
    kept = probe()
    if kept["outcome"] == "not glibc":
        pytest.skip("this C library is not glibc")
    assert kept["outcome"] == "set" and kept["again"] == "set"
    # once the heap holds a block that fits, the same memory serves the buffer again: no fresh pages
    assert max(kept["faults"][-4:]) < PAGES // 20, kept

    system = probe(D3CODEC_MALLOC="system")
    assert system["outcome"] == "disabled"
    # glibc's default maps a fresh 64 MiB every round: every page faults in again
    assert min(system["faults"][-4:]) > PAGES // 2, system


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_a_users_own_malloc_setting_is_left_alone(name):
    value = "glibc.malloc.check=0" if name == "GLIBC_TUNABLES" else "131072"
    result = probe(**{name: value})
    if result["outcome"] == "not glibc":
        pytest.skip("this C library is not glibc")
    assert result["outcome"] == "user setting"
