"""Progress that reads well in a terminal and in a log file.

In a terminal, :func:`progress_bar` is tqdm's bar as usual. Where standard error is not a terminal (a log
file, a pipe, a batch job), a bar redrawn with carriage returns would pile every refresh into one huge
"line"; there it writes one plain line every LOG_SECONDS instead, each with the time of day, the count,
the rate and the time left::

    14:02:31 DM: 120/400 (30 %), 00:02:41 elapsed, 00:06:15 left, 0.74 it/s, loss=0.412

tqdm does the counting; :class:`LogLines` turns its redraws into lines.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Iterable, TextIO

from tqdm.auto import tqdm

LOG_SECONDS = 30.0  # least time between two lines in a log
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f} %), {elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}"


class LogLines(io.TextIOBase):
    """A text stream for tqdm outside a terminal: every redraw becomes one line, with the time of day."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            part = part.strip()
            if part:
                self.stream.write(f"{time.strftime('%H:%M:%S')} {part}\n")
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable, desc: str, enabled: bool = True, stream: TextIO | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, desc=desc, **kwargs)`` in a terminal; elsewhere a line every LOG_SECONDS (and at
    the start and the end) on ``stream`` (default standard error). ``enabled`` False: silent."""
    stream = stream if stream is not None else sys.stderr
    if not enabled or is_terminal(stream):
        return tqdm(iterable, desc=desc, disable=not enabled, file=stream if enabled else None, **kwargs)
    return tqdm(iterable, desc=desc, file=LogLines(stream), mininterval=LOG_SECONDS, maxinterval=LOG_SECONDS,
                bar_format=LOG_FORMAT, ascii=True, dynamic_ncols=False, **kwargs)
