"""Progress that reads well in a terminal and in a log file.

In a terminal, :func:`progress_bar` is tqdm's bar as usual. Where standard error is not a terminal (a log
file, a pipe, a batch job), a bar redrawn with carriage returns would pile every refresh into one huge
"line"; there it writes one plain line every LOG_SECONDS instead, each with the time of day, the count,
the rate and the time left::

    14:02:31 DM: 120/400 (30 %), 00:02:41 elapsed, 00:06:15 left, 0.74 it/s, loss=0.412

tqdm does the counting; :class:`LogLines` turns its redraws into lines. A run of several stages (a
teacher, a warm start, matching) names each bar by its stage and adds the whole run's time left
(:class:`Stages`)::

    14:02:31 D3 warm start (2/3): 120/2000 (6 %), 00:00:31 elapsed, 00:08:01 left, 3.87 it/s, all stages 00:17:40 left
"""

from __future__ import annotations

import io
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sized, TextIO, cast

from tqdm.auto import tqdm

LOG_SECONDS = 30.0  # least time between two lines in a log
LOG_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f} %), {elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}"
)


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


_ACTIVE: list = []  # (Stages, stage name) of the stage running now, innermost last (see Stages.stage)


def progress_bar(iterable: Iterable, desc: str, enabled: bool = True, stream: TextIO | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, desc=desc, **kwargs)`` in a terminal; elsewhere a line every LOG_SECONDS (and at
    the start and the end) on ``stream`` (default standard error). ``enabled`` False: silent.

    Inside ``with stages.stage(name)`` (:class:`Stages`), the bar is that stage's instead: named by the
    stage, with the whole run's time left (an iterator then, without tqdm's methods)."""
    if _ACTIVE and enabled:
        stages, name = _ACTIVE[-1]
        total = kwargs.pop("total", None)
        size = total if total is not None else len(cast(Sized, iterable))  # no total given: a range or a list
        return stages.bar(name, iterable, size, **kwargs)
    stream = stream if stream is not None else sys.stderr
    if not enabled or is_terminal(stream):
        return tqdm(iterable, desc=desc, disable=not enabled, file=stream if enabled else None, **kwargs)
    return tqdm(
        iterable,
        desc=desc,
        file=LogLines(stream),
        mininterval=LOG_SECONDS,
        maxinterval=LOG_SECONDS,
        bar_format=LOG_FORMAT,
        ascii=True,
        dynamic_ncols=False,
        **kwargs,
    )


def note(text: str, enabled: bool = True, stream: TextIO | None = None) -> None:
    """One line of progress between bars (a step with no count to show, such as compressing an archive),
    with the time of day as a log line has it (:class:`LogLines`), on ``stream`` (default standard error);
    ``enabled`` False: silent."""
    if enabled:
        LogLines(stream if stream is not None else sys.stderr).write(text)


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its name and its expected work, in a unit shared by the run's stages (d3codec's
    encoders count multiply-adds, from d3codec.format.limits.network_cost)."""

    name: str
    work: float


class Stages:
    """The stages of one run, in order: each bar is named ``"<title> <stage> (i/n)"`` and shows, beside its
    own time left, the whole run's: the work left (this stage's rest and the stages to come) at the rate
    of the work done so far in this process. Stages restored from a checkpoint are :meth:`skip`-ped:
    they count as done without counting towards the rate.

    The estimate assumes every unit of work takes the same time; it is rough at the start (the first
    stage alone sets the rate) and steadies as the run goes on.
    """

    def __init__(self, title: str, stages: list[Stage], enabled: bool = True, stream: TextIO | None = None):
        self.title, self.stages, self.enabled, self.stream = title, list(stages), enabled, stream
        self.total = sum(s.work for s in self.stages)
        self.done = 0.0  # work of the stages finished or skipped
        self.credited = 0.0  # of that and of the current stage, the work done in this process
        self.started = time.monotonic()

    def index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    @contextmanager
    def stage(self, name: str):
        """While inside, every enabled :func:`progress_bar` (a teacher's training, say, that knows nothing
        of stages) is the bar of stage ``name``."""
        _ACTIVE.append((self, name))
        try:
            yield self
        finally:
            _ACTIVE.pop()

    def skip(self, name: str) -> None:
        """Count stage ``name`` as done without running it (its result came from a checkpoint)."""
        self.done += self.stages[self.index(name)].work

    def seconds_left(self, current: float) -> float | None:
        """The whole run's estimated seconds left, ``current`` being the work done of the running stage
        (None until there is a rate)."""
        elapsed, credited = time.monotonic() - self.started, self.credited + current
        if credited <= 0 or elapsed <= 0:
            return None
        return max(0.0, self.total - self.done - current) * elapsed / credited

    def bar(self, name: str, iterable: Iterable, total: int, initial: int = 0, **kwargs) -> Iterator:
        """Iterate over ``iterable`` (``total`` steps, ``initial`` of them done before: a resumed stage) under
        the stage's bar; the stage's work is spread evenly over its steps."""
        i = self.index(name)
        work = self.stages[i].work
        per_step = work / max(total, 1)
        self.done += per_step * initial  # done in an earlier process: not counted towards the rate
        outer, _ACTIVE[:] = list(_ACTIVE), []  # the stage's own bar is a plain one
        try:
            bar = progress_bar(
                iterable,
                f"{self.title} {name} ({i + 1}/{len(self.stages)})",
                self.enabled,
                self.stream,
                total=total,
                initial=initial,
                **kwargs,
            )
        finally:
            _ACTIVE[:] = outer
        steps = 0
        for item in bar:
            yield item
            steps += 1
            left = self.seconds_left(per_step * steps)
            if left is not None:
                bar.set_postfix_str(f"all stages {_clock(left)} left", refresh=False)
        self.done += per_step * steps
        self.credited += per_step * steps


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
