"""Progress in a log file: plain timestamped lines, not carriage-return redraws."""

from __future__ import annotations

import io
import re

from d3codec.util import progress


def test_outside_a_terminal_progress_is_a_few_timestamped_lines(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # a line for every step, so the test sees several
    for _ in progress.progress_bar(range(5), "DM", stream=log, unit="it"):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) >= 2
    assert all(re.match(r"\d\d:\d\d:\d\d DM: \d/5 \(\d+ %\), ", line) for line in lines), lines
    assert lines[-1].startswith(lines[-1][:9] + "DM: 5/5 (100 %)") and "left" in lines[-1]


def test_a_silent_bar_writes_nothing():
    log = io.StringIO()
    assert list(progress.progress_bar(range(3), "x", enabled=False, stream=log)) == [0, 1, 2]
    assert log.getvalue() == ""


def test_stages_name_their_bars_and_estimate_the_time_the_whole_run_has_left(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    log = io.StringIO()
    stages = progress.Stages(
        "D3",
        [progress.Stage("teacher", 10), progress.Stage("warm start", 30), progress.Stage("matching", 60)],
        stream=log,
    )
    with stages.stage("teacher"):  # a bar made inside, by code that knows no stages, is the stage's
        for _ in progress.progress_bar(range(10), "teacher", unit="step"):
            clock[0] += 1.0  # one unit of work a second
    assert stages.seconds_left(0.0) == 90.0  # 30 + 60 units left at that rate
    stages.skip("warm start")  # restored from a checkpoint: done, but not counted towards the rate
    assert stages.seconds_left(0.0) == 60.0
    for _ in stages.bar("matching", range(3, 6), 6, 3):  # resumed at step 3 of 6: half done before
        clock[0] += 10.0
    text = log.getvalue()
    assert "D3 teacher (1/3): 10/10" in text and "D3 matching (3/3): 6/6" in text and "all stages" in text
    assert stages.seconds_left(0.0) == 0.0
    plain = io.StringIO()  # outside a stage, bars are as before
    list(progress.progress_bar(range(2), "DM", stream=plain))
    assert "DM: 2/2" in plain.getvalue() and "all stages" not in plain.getvalue()
