"""Long encodes survive a kill: the checkpoint resumes to the same archive as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from d3codec import D3Dataset
from d3codec.encode.pipeline import compress
from d3codec.errors import D3Error
from d3codec.format.container import D3Reader
from d3codec.methods.pixel import DMEncoder

WORKER = Path(__file__).resolve().parent / "resume_worker.py"
ITERATIONS = 60


def worker(out, checkpoint) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(checkpoint), str(ITERATIONS)], env=env)


def saved_iteration(checkpoint: Path) -> int:
    try:
        with safe_open(str(checkpoint), "pt") as f:
            return int(f.metadata()["iteration"])
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return 0


def method_sections(path) -> dict[str, bytes]:
    with D3Reader(path) as r:
        return {s.name: r.read_bytes(s.name) for s in r.sections if s.name != "meta"}


def test_a_killed_bptt_encoder_resumes_to_the_same_archive(tmp_path):
    reference = tmp_path / "reference.d3"
    assert worker(reference, tmp_path / "reference.ckpt").wait(timeout=300) == 0
    assert not (tmp_path / "reference.ckpt").exists()  # deleted once the archive is written

    out, checkpoint = tmp_path / "out.d3", tmp_path / "out.ckpt"
    process = worker(out, checkpoint)
    deadline = time.time() + 300
    while saved_iteration(checkpoint) < 5 and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = saved_iteration(checkpoint)
    assert 5 <= killed_at < ITERATIONS, "the worker should have been killed mid-run"
    assert not out.exists()  # nothing partial at the target

    assert worker(out, checkpoint).wait(timeout=300) == 0
    assert method_sections(out) == method_sections(reference)  # images and schedule, byte for byte
    assert D3Dataset(out).meta["stats"]["resumed_at_iteration"] >= killed_at
    assert not checkpoint.exists()


class Interrupted(Exception):
    pass


def stop_after_saving(monkeypatch, iteration: int, file_name: str | None = None) -> None:
    """Make Checkpoint.save raise Interrupted right after it writes ``iteration`` (to ``file_name`` only, if given):
    a kill at the worst moment, in process. ``monkeypatch.undo()`` lifts it."""
    from d3codec.encode import checkpoint as checkpoint_module

    real_save = checkpoint_module.Checkpoint.save

    def save_then_stop(self, it, *args):
        real_save(self, it, *args)
        if it == iteration and file_name in (None, self.path.name):
            raise Interrupted()

    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", save_then_stop)


def test_dm_resumes_after_an_interruption_and_refuses_another_runs_checkpoint(tiny_real, tmp_path, monkeypatch):
    def encoder(**kw):
        return DMEncoder.from_options(
            "fast", tmp_path / "dm.ckpt", checkpoint_seconds=0, iterations=8, real_per_class=4, embed_width=8, **kw
        )

    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)

    stop_after_saving(monkeypatch, 3)
    with pytest.raises(Interrupted):
        compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "dm.ckpt").exists() and not (tmp_path / "dm.d3").exists()

    with pytest.raises(D3Error, match="other data, options or seed"):
        compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=2, progress=False)
    compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)
    assert torch.equal(D3Dataset(tmp_path / "dm.d3").images, D3Dataset(tmp_path / "reference.d3").images)
    assert D3Dataset(tmp_path / "dm.d3").meta["stats"]["resumed_at_iteration"] == 3


def test_d2m_fine_tuning_resumes_after_an_interruption_to_the_same_generator(tiny_real, tmp_path, monkeypatch):
    """Interrupted at fine-tuning iteration 3 of 5, the same call goes on from there: pre-training and
    the teacher are not run again (their results are in the checkpoint) and the archive is the same."""
    from d3codec.methods import d2m
    from d3codec.methods.d2m import encoder as d2m_encoder

    def encoder(name):
        return d2m.D2MEncoder.from_options(
            "fast",
            None,
            None,
            tmp_path / f"{name}.pretrain",
            tmp_path / f"{name}.ckpt",
            checkpoint_seconds=0,
            pretrain_iterations=4,
            pretrain_batch=8,
            disc_width=4,
            iterations=5,
            synthetic_per_class=4,
            real_per_class=6,
            embed_width=8,
            teacher_epochs=1.0,
            teacher_width=8,
            noise_dim=4,
            embed_dim=4,
        )

    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder("reference"), budget=12_000, seed=1, progress=False)
    assert not (tmp_path / "reference.ckpt").exists()  # deleted once the archive is written

    stop_after_saving(monkeypatch, 3, "g.ckpt")  # fine-tuning's checkpoint (pre-training has its own)
    with pytest.raises(Interrupted):
        compress(tiny_real, tmp_path / "g.d3", encoder=encoder("g"), budget=12_000, seed=1, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "g.ckpt").exists() and not (tmp_path / "g.d3").exists()

    with pytest.raises(D3Error, match="other data, options or seed"):
        compress(tiny_real, tmp_path / "g.d3", encoder=encoder("g"), budget=12_000, seed=2, progress=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a resumed fine-tuning ran pre-training or the teacher again")

    monkeypatch.setattr(d2m.D2MEncoder, "pretrain", must_not_run)
    monkeypatch.setattr(d2m_encoder, "train_teacher", must_not_run)
    compress(tiny_real, tmp_path / "g.d3", encoder=encoder("g"), budget=12_000, seed=1, progress=False)
    assert method_sections(tmp_path / "g.d3") == method_sections(tmp_path / "reference.d3")
    stats = D3Dataset(tmp_path / "g.d3").meta["params"]["stats"]
    reference_stats = D3Dataset(tmp_path / "reference.d3").meta["params"]["stats"]
    assert stats["teacher_accuracy"] == reference_stats["teacher_accuracy"]
    assert stats["final_loss"] == reference_stats["final_loss"]
    assert D3Dataset(tmp_path / "g.d3").meta["stats"]["resumed_at_iteration"] == 3
    assert not (tmp_path / "g.ckpt").exists()


def test_d3_resumes_each_subtask_from_its_checkpoint_to_the_same_archive(tiny_real, tmp_path, monkeypatch):
    """Two subtasks; interrupted at matching iteration 3 of 5 of the second, the same call skips the
    finished first subtask and the second's warm start and teacher, and writes the same archive."""
    from d3codec.methods import d3
    from d3codec.methods.d3 import group as d3_encoder

    def encoder(name):
        return d3.D3Encoder.from_options(
            "fast",
            None,
            tmp_path / f"{name}.ckpt",
            checkpoint_seconds=0,
            subtasks=2,
            iterations=5,
            init_iterations=5,
            real_per_class=6,
            synthetic_per_class=4,
            embed_width=8,
            teacher_epochs=1.0,
            teacher_width=8,
        )

    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder("reference"), budget=30_000, seed=1, progress=False)
    assert not list(tmp_path.glob("reference.g*.ckpt"))  # deleted once the archive is written

    stop_after_saving(monkeypatch, 3, "s.g1.ckpt")
    with pytest.raises(Interrupted):
        compress(tiny_real, tmp_path / "s.d3", encoder=encoder("s"), budget=30_000, seed=1, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "s.g0.ckpt").exists() and (tmp_path / "s.g1.ckpt").exists()
    assert not (tmp_path / "s.d3").exists()

    with pytest.raises(D3Error, match="other data, options or seed"):
        compress(tiny_real, tmp_path / "s.d3", encoder=encoder("s"), budget=30_000, seed=2, progress=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a resumed subtask ran its warm start or its teacher again")

    monkeypatch.setattr(d3_encoder, "fit_decoder", must_not_run)
    monkeypatch.setattr(d3_encoder, "train_teacher", must_not_run)
    compress(tiny_real, tmp_path / "s.d3", encoder=encoder("s"), budget=30_000, seed=1, progress=False)
    assert method_sections(tmp_path / "s.d3") == method_sections(tmp_path / "reference.d3")
    groups = D3Dataset(tmp_path / "s.d3").meta["params"]["groups"]
    reference = D3Dataset(tmp_path / "reference.d3").meta["params"]["groups"]
    assert [g["stats"]["resumed_at_iteration"] for g in groups] == [5, 3]
    assert [g["stats"]["final_loss"] for g in groups] == [g["stats"]["final_loss"] for g in reference]
    assert [g["stats"]["teacher_accuracy"] for g in groups] == [g["stats"]["teacher_accuracy"] for g in reference]
    assert not list(tmp_path.glob("s.g*.ckpt"))


def full_disk_encoder(method: str, folder: Path):
    """(a small encoder of ``method`` checkpointing into ``folder``, the file that keeps its state, its iterations)."""
    from d3codec.methods.d2m import D2MEncoder
    from d3codec.methods.d3 import D3Encoder

    if method == "dm":
        return (
            DMEncoder.from_options("fast", folder / "x.ckpt", iterations=5, real_per_class=4, embed_width=8),
            "x.ckpt",
            5,
        )
    if method == "d2m":
        return (
            D2MEncoder.from_options(
                "fast",
                None,
                None,
                folder / "x.pretrain",
                folder / "x.ckpt",
                pretrain_iterations=2,
                pretrain_batch=8,
                disc_width=4,
                iterations=2,
                synthetic_per_class=4,
                real_per_class=6,
                embed_width=8,
                teacher_epochs=1.0,
                teacher_width=8,
                noise_dim=4,
                embed_dim=4,
            ),
            "x.ckpt",
            2,
        )
    return (
        D3Encoder.from_options(
            "fast",
            None,
            folder / "x.ckpt",
            iterations=3,
            init_iterations=2,
            real_per_class=6,
            synthetic_per_class=4,
            embed_width=8,
            teacher_epochs=1.0,
            teacher_width=8,
        ),
        "x.g0.ckpt",
        3,
    )


@pytest.mark.parametrize("method", ["dm", "d2m", "d3"])
def test_a_full_disk_at_the_end_names_the_checkpoint_and_the_next_run_only_writes(
    method, tiny_real, tmp_path, monkeypatch
):
    import d3codec.encode.pipeline

    budget = 20_000
    (tmp_path / "r").mkdir()  # the uninterrupted run checkpoints elsewhere
    compress(
        tiny_real,
        tmp_path / "reference.d3",
        encoder=full_disk_encoder(method, tmp_path / "r")[0],
        budget=budget,
        seed=1,
        progress=False,
    )

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(d3codec.encode.pipeline, "write_atomic", disk_full)
    encoder, kept, iterations = full_disk_encoder(method, tmp_path)
    with pytest.raises(OSError, match=f"No space left on device.*kept in .*{kept}.*run the same command again"):
        compress(tiny_real, tmp_path / "x.d3", encoder=encoder, budget=budget, seed=1, progress=False)
    assert not (tmp_path / "x.d3").exists() and (tmp_path / kept).exists()

    monkeypatch.undo()
    compress(
        tiny_real,
        tmp_path / "x.d3",
        encoder=full_disk_encoder(method, tmp_path)[0],
        budget=budget,
        seed=1,
        progress=False,
    )
    assert D3Dataset(tmp_path / "x.d3").meta["stats"]["resumed_at_iteration"] == iterations  # nothing distilled again
    assert method_sections(tmp_path / "x.d3") == method_sections(tmp_path / "reference.d3")
    assert not (tmp_path / kept).exists()


def test_each_encoder_lists_the_checkpoints_a_run_would_take_up(tmp_path):
    from d3codec.methods.d2m import D2MEncoder
    from d3codec.methods.d3 import D3Encoder

    d3 = D3Encoder.from_options("fast", None, tmp_path / "x.ckpt")
    for name in ("x.g0.ckpt", "x.g12.ckpt", "x.gold.ckpt", "y.g0.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in d3.checkpoint_files()] == ["x.g0.ckpt", "x.g12.ckpt"]
    assert D3Encoder.from_options("fast").checkpoint_files() == []

    d2m = D2MEncoder.from_options("fast", None, None, tmp_path / "g.pretrain", tmp_path / "g.ckpt")
    assert d2m.checkpoint_files() == []
    (tmp_path / "g.pretrain").write_bytes(b"")
    assert d2m.checkpoint_files() == [tmp_path / "g.pretrain"]
    assert DMEncoder.from_options("fast", tmp_path / "x.g0.ckpt").checkpoint_files() == [tmp_path / "x.g0.ckpt"]


def test_weights_digest_tells_apart_any_change_of_value_name_or_dtype():
    from d3codec.encode.checkpoint import weights_digest

    state = {"w": torch.arange(6.0).view(2, 3), "steps": torch.tensor(3)}  # a 0-d tensor too
    assert weights_digest(state) == weights_digest({k: v.clone() for k, v in state.items()})
    assert weights_digest(state) != weights_digest({**state, "steps": torch.tensor(4)})
    assert weights_digest(state) != weights_digest({**state, "w": state["w"].double()})
    assert weights_digest(state) != weights_digest({"v": state["w"], "steps": state["steps"]})


def test_a_checkpoint_restores_tensors_and_modules_and_calls_a_mismatch_damaged(tmp_path):
    from d3codec.encode.checkpoint import Checkpoint

    torch.manual_seed(0)
    net, images = torch.nn.Linear(2, 3), torch.randn(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(images).sum().backward()
    opt.step()
    Checkpoint(tmp_path / "c.ckpt", "test", "run").save(
        7, {"images": images}, {"sgd": opt}, torch.Generator(), {"net": net}
    )

    fresh, fresh_images = torch.nn.Linear(2, 3), torch.zeros(4, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    iteration, saved = Checkpoint(tmp_path / "c.ckpt", "test", "run").resume(
        {"sgd": fresh_opt}, torch.Generator(), torch.device("cpu"), {"images": fresh_images}, {"net": fresh}
    )
    assert iteration == 7 and torch.equal(fresh_images, images) and torch.equal(fresh.weight, net.weight)
    assert set(saved) == {"images", "net.weight", "net.bias"}

    for learned, modules in [
        ({"missing": torch.zeros(1)}, {}),
        ({}, {"net": torch.nn.Linear(2, 4)}),
        ({}, {"other": torch.nn.Linear(2, 3)}),
    ]:
        with pytest.raises(D3Error, match="is damaged"):
            Checkpoint(tmp_path / "c.ckpt", "test", "run").resume(
                {"sgd": fresh_opt}, torch.Generator(), torch.device("cpu"), learned, modules
            )
