"""The one resumable loop every method's long optimisation runs in: DM's and BPTT's images, each D3
subtask's priors and decoder, D2M's pre-training and fine-tuning.

A loop owns its checkpoint (d3codec.encode.checkpoint: the file, its kind and the fingerprint of the run),
resumes from it, saves when one is due, and keeps what a kill must not lose besides the learned state:
the last loss, the seconds spent before the kill, and any scalars the method carries (a teacher's accuracy,
an earlier phase's seconds). The method gives its state (:class:`LoopState`) and one step; the loop gives
the iterations still to run. Without a checkpoint file name the same loop runs and saves nothing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from d3codec.encode.checkpoint import Checkpoint, fingerprint


@dataclass
class LoopState:
    """What a loop learns, saved with every checkpoint and restored in place on resume."""

    generator: torch.Generator  # the loop's random stream
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # learned leaf tensors, by name
    optimisers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)  # by name
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # networks (learned, or trained before)


class ResumableLoop:
    """Iterations ``first`` … ``total`` − 1 of one loop, made resumable by a checkpoint file.

    Args:
        path: the checkpoint file (None: run without one).
        kind: what writes it (``"pixel-dm"``, ``"d3-group"``, ...); a file of another kind is refused.
        run: what decides the result (options, plan, seed, data), hashed into the fingerprint; a file of
            another run is refused (d3codec.errors.D3Error).
        total: the loop's iterations.
        every_seconds: the least time between two saves; ``every_iterations``, where given, saves every
            that many iterations instead. The last iteration is always saved.
        saves: False for a rank that resumes but leaves the writing to another (federated subtasks).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        kind: str,
        run: tuple,
        total: int,
        every_seconds: float = 300.0,
        every_iterations: int | None = None,
        saves: bool = True,
    ):
        self.checkpoint = Checkpoint(Path(path), kind, fingerprint(kind, *run), every_seconds) if path else None
        self.total, self.every_iterations, self.saves = total, every_iterations, saves
        self.first, self.loss = 0, float("nan")
        self.carry: dict[str, float] = {}  # scalars saved with the state and given back on resume
        self.resumed = False
        self.state: LoopState | None = None
        self._began = time.time()

    @property
    def resuming(self) -> bool:
        """Whether a checkpoint file is there to resume (before :meth:`resume`: what a method may skip)."""
        return self.checkpoint is not None and self.checkpoint.path.is_file()

    @property
    def seconds(self) -> float:
        """Seconds of this loop's run, those spent before a kill included."""
        return time.time() - self._began

    def resume(self, state: LoopState, device: torch.device) -> None:
        """Restore ``state`` from the file, if there is one, and the iteration, loss, seconds and carried
        scalars saved with it. Raises: D3Error for another run's or a damaged checkpoint."""
        self.state, self.device = state, torch.device(device)
        if self.checkpoint is None:
            return
        resumed = self.checkpoint.resume(state.optimisers, state.generator, device, state.tensors, state.modules)
        if resumed is None:
            return
        self.first, saved = resumed
        self.resumed = True
        self.loss = float(saved.pop("loss", torch.tensor(math.nan)))
        self._began -= float(saved.pop("seconds", torch.tensor(0.0)))
        modules = tuple(f"{name}." for name in state.modules)
        self.carry = {
            name: float(v)
            for name, v in saved.items()
            if v.numel() == 1 and name not in state.tensors and not name.startswith(modules)
        }

    def save(self, done: int) -> None:
        """Write the state after ``done`` iterations (when there is a file and this process saves; before
        :meth:`run` ends)."""
        if self.checkpoint is None or not self.saves or self.state is None:
            return
        if self.device.type == "cuda":  # its queued work done, so that the seconds saved count it
            torch.cuda.synchronize(self.device)
        scalars = {"loss": self.loss, "seconds": self.seconds, **self.carry}
        self.checkpoint.save(
            done,
            {**self.state.tensors, **{k: torch.tensor(v) for k, v in scalars.items()}},
            self.state.optimisers,
            self.state.generator,
            self.state.modules,
        )

    def due(self, done: int) -> bool:
        if self.checkpoint is None or not self.saves:
            return False
        if self.every_iterations is not None:
            return done % self.every_iterations == 0 or done == self.total
        return self.checkpoint.due(done, self.total)

    def run(self, step: Callable[[int], float], iterations: Iterable[int] | None = None) -> float:
        """Call ``step(it)`` (it returns the iteration's loss) for the iterations left, saving when due;
        ``iterations``: what yields them (a progress bar over range(first, total)). Returns the last loss."""
        for it in range(self.first, self.total) if iterations is None else iterations:
            self.loss = step(it)
            if self.due(it + 1):
                self.save(it + 1)
        self.state = None  # the loop's state is the method's again: its optimisers' memory goes with it
        return self.loss

    def stats(self) -> dict:
        """The run's figures for an archive's ``meta.stats``: the last loss where finite, and the iteration a
        resumed run went on from."""
        out = {"final_loss": round(self.loss, 6)} if math.isfinite(self.loss) else {}
        return {**out, **({"resumed_at_iteration": self.first} if self.first else {})}

    def remove(self) -> None:
        """Delete the file (once the archive is written)."""
        if self.checkpoint is not None:
            self.checkpoint.remove()
