"""The one resumable loop (d3codec.encode.loop): a loop stopped and resumed ends where an uninterrupted one
ends, carries its loss, seconds and scalars, and refuses another run's checkpoint."""

import math

import pytest
import torch

from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.errors import D3Error


def toy(path, total=6, run=("toy", 1), stop_after=None):
    """Fit w to a random target with SGD and momentum, one random draw an iteration; optionally die early."""
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(3, requires_grad=True)
    net = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(net.weight)
    torch.nn.init.constant_(net.bias, 0.5)
    opt = torch.optim.SGD([w, *net.parameters()], lr=0.1, momentum=0.9)
    loop = ResumableLoop(path, "toy", run, total, every_seconds=0.0)
    loop.resume(LoopState(gen, {"w": w}, {"sgd": opt}, {"net": net}), torch.device("cpu"))

    def step(it: int) -> float:
        if stop_after is not None and it == stop_after:
            raise KeyboardInterrupt  # a kill between two iterations
        x = torch.randn(3, generator=gen)
        loss = ((w - x) ** 2).sum() + net(x).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    loop.carry["teacher_accuracy"] = 0.75
    loop.run(step)
    return loop, w.detach().clone(), net.weight.detach().clone()


def test_a_killed_loop_resumed_ends_as_an_uninterrupted_one(tmp_path):
    whole, w, weight = toy(None)
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path / "a.ckpt", stop_after=4)
    resumed, w2, weight2 = toy(tmp_path / "a.ckpt")
    assert resumed.resumed and resumed.first == 4 and not whole.resumed
    assert torch.equal(w, w2) and torch.equal(weight, weight2) and resumed.loss == whole.loss
    assert resumed.carry == {"teacher_accuracy": 0.75}
    assert resumed.stats() == {"final_loss": round(whole.loss, 6), "resumed_at_iteration": 4}
    assert resumed.seconds >= 0 and math.isfinite(resumed.seconds)
    resumed.remove()
    assert not (tmp_path / "a.ckpt").exists()


def test_another_runs_checkpoint_is_refused_and_a_file_is_only_written_by_a_saving_loop(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path / "b.ckpt", stop_after=2)
    with pytest.raises(D3Error, match="other data, options or seed"):
        toy(tmp_path / "b.ckpt", run=("toy", 2))
    loop = ResumableLoop(tmp_path / "c.ckpt", "toy", (), 3, saves=False)
    loop.resume(LoopState(torch.Generator()), torch.device("cpu"))
    loop.run(lambda it: 0.0)
    assert not (tmp_path / "c.ckpt").exists() and loop.loss == 0.0
    every = ResumableLoop(tmp_path / "d.ckpt", "toy", (), 10, every_iterations=4)
    assert [every.due(n) for n in (3, 4, 8, 9, 10)] == [False, True, True, False, True]
