"""Progress in a log file: plain timestamped lines, not carriage-return redraws."""

from __future__ import annotations

import io
import re

from d3codec import progress


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
