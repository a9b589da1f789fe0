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
from d3codec.compress import compress
from d3codec.container import D3Reader
from d3codec.errors import D3Error
from d3codec.methods.pixel import PixelEncoder

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


def test_dm_resumes_after_an_interruption_and_refuses_another_runs_checkpoint(tiny_real, tmp_path, monkeypatch):
    from d3codec import checkpoint as checkpoint_module

    def encoder(**kw):
        return PixelEncoder.from_options("fast", tmp_path / "dm.ckpt", checkpoint_seconds=0, iterations=8,
                                         real_per_class=4, embed_width=8, **kw)
    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)

    real_save = checkpoint_module.Checkpoint.save

    def save_then_stop(self, iteration, *args):
        real_save(self, iteration, *args)
        if iteration == 3:
            raise Interrupted()
    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted):
        compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)
    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", real_save)
    assert (tmp_path / "dm.ckpt").exists() and not (tmp_path / "dm.d3").exists()

    with pytest.raises(D3Error, match="other data, options or seed"):
        compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=2, progress=False)
    compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)
    assert torch.equal(D3Dataset(tmp_path / "dm.d3").images, D3Dataset(tmp_path / "reference.d3").images)
    assert D3Dataset(tmp_path / "dm.d3").meta["stats"]["resumed_at_iteration"] == 3


def test_a_full_disk_at_the_end_keeps_the_distilled_state_for_the_next_run(tiny_real, tmp_path, monkeypatch):
    import d3codec.compress

    def encoder():
        return PixelEncoder.from_options("fast", tmp_path / "dm.ckpt", iterations=5, real_per_class=4, embed_width=8)
    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(d3codec.compress, "write_atomic", disk_full)
    with pytest.raises(OSError, match="No space left on device.*kept in .*dm.ckpt.*run the same command again"):
        compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)
    assert not (tmp_path / "dm.d3").exists() and (tmp_path / "dm.ckpt").exists()

    monkeypatch.undo()
    compress(tiny_real, tmp_path / "dm.d3", encoder=encoder(), budget=6_000, seed=1, progress=False)
    ds = D3Dataset(tmp_path / "dm.d3")
    assert ds.meta["stats"]["resumed_at_iteration"] == 5  # nothing distilled again
    assert torch.equal(ds.images, D3Dataset(tmp_path / "reference.d3").images)
    assert not (tmp_path / "dm.ckpt").exists()


def test_d2m_fine_tuning_resumes_after_an_interruption_to_the_same_generator(tiny_real, tmp_path, monkeypatch):
    """Interrupted at fine-tuning iteration 3 of 5, the same call goes on from there: pre-training and
    the teacher are not run again (their results are in the checkpoint) and the archive is the same."""
    from d3codec import checkpoint as checkpoint_module
    from d3codec.methods import d2m

    def encoder(name):
        return d2m.D2MEncoder.from_options(
            "fast", None, None, tmp_path / f"{name}.pretrain", tmp_path / f"{name}.ckpt", checkpoint_seconds=0,
            pretrain_iterations=4, pretrain_batch=8, disc_width=4, iterations=5, synthetic_per_class=4,
            real_per_class=6, embed_width=8, teacher_epochs=1.0, teacher_width=8, noise_dim=4, embed_dim=4)
    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder("reference"), budget=12_000, seed=1, progress=False)
    assert not (tmp_path / "reference.ckpt").exists()  # deleted once the archive is written

    real_save = checkpoint_module.Checkpoint.save

    def save_then_stop(self, iteration, *args):
        real_save(self, iteration, *args)
        if iteration == 3:
            raise Interrupted()
    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted):
        compress(tiny_real, tmp_path / "g.d3", encoder=encoder("g"), budget=12_000, seed=1, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "g.ckpt").exists() and not (tmp_path / "g.d3").exists()

    with pytest.raises(D3Error, match="other data, options or seed"):
        compress(tiny_real, tmp_path / "g.d3", encoder=encoder("g"), budget=12_000, seed=2, progress=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a resumed fine-tuning ran pre-training or the teacher again")
    monkeypatch.setattr(d2m.D2MEncoder, "pretrain", must_not_run)
    monkeypatch.setattr(d2m, "train_teacher", must_not_run)
    compress(tiny_real, tmp_path / "g.d3", encoder=encoder("g"), budget=12_000, seed=1, progress=False)
    assert method_sections(tmp_path / "g.d3") == method_sections(tmp_path / "reference.d3")
    stats = D3Dataset(tmp_path / "g.d3").meta["params"]["stats"]
    reference_stats = D3Dataset(tmp_path / "reference.d3").meta["params"]["stats"]
    assert stats["teacher_accuracy"] == reference_stats["teacher_accuracy"]
    assert stats["final_loss"] == reference_stats["final_loss"]
    assert D3Dataset(tmp_path / "g.d3").meta["stats"]["resumed_at_iteration"] == 3
    assert not (tmp_path / "g.ckpt").exists()


def test_a_full_disk_after_d2m_fine_tuning_names_the_checkpoint_and_loses_nothing(tiny_real, tmp_path, monkeypatch):
    import d3codec.compress
    from d3codec.methods import d2m

    def encoder():
        return d2m.D2MEncoder.from_options(
            "fast", None, None, tmp_path / "g.pretrain", tmp_path / "g.ckpt", pretrain_iterations=2, pretrain_batch=8,
            disc_width=4, iterations=2, synthetic_per_class=4, real_per_class=6, embed_width=8, teacher_epochs=1.0,
            teacher_width=8, noise_dim=4, embed_dim=4)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(d3codec.compress, "write_atomic", disk_full)
    with pytest.raises(OSError, match="No space left on device.*kept in .*g.ckpt.*run the same command again"):
        compress(tiny_real, tmp_path / "g.d3", encoder=encoder(), budget=12_000, seed=1, progress=False)
    assert not (tmp_path / "g.d3").exists() and (tmp_path / "g.ckpt").exists()

    monkeypatch.undo()
    compress(tiny_real, tmp_path / "g.d3", encoder=encoder(), budget=12_000, seed=1, progress=False)
    assert D3Dataset(tmp_path / "g.d3").meta["stats"]["resumed_at_iteration"] == 2  # nothing fine-tuned again


def test_d3_resumes_each_subtask_from_its_checkpoint_to_the_same_archive(tiny_real, tmp_path, monkeypatch):
    """Two subtasks; interrupted at matching iteration 3 of 5 of the second, the same call skips the
    finished first subtask and the second's warm start and teacher, and writes the same archive."""
    from d3codec import checkpoint as checkpoint_module
    from d3codec.methods import d3

    def encoder(name):
        return d3.D3Encoder.from_options(
            "fast", None, tmp_path / f"{name}.ckpt", checkpoint_seconds=0, subtasks=2, iterations=5, init_iterations=5,
            real_per_class=6, synthetic_per_class=4, embed_width=8, teacher_epochs=1.0, teacher_width=8)
    compress(tiny_real, tmp_path / "reference.d3", encoder=encoder("reference"), budget=30_000, seed=1, progress=False)
    assert not list(tmp_path.glob("reference.g*.ckpt"))  # deleted once the archive is written

    real_save = checkpoint_module.Checkpoint.save

    def save_then_stop(self, iteration, *args):
        real_save(self, iteration, *args)
        if self.path.name == "s.g1.ckpt" and iteration == 3:
            raise Interrupted()
    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted):
        compress(tiny_real, tmp_path / "s.d3", encoder=encoder("s"), budget=30_000, seed=1, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "s.g0.ckpt").exists() and (tmp_path / "s.g1.ckpt").exists()
    assert not (tmp_path / "s.d3").exists()

    with pytest.raises(D3Error, match="other data, options or seed"):
        compress(tiny_real, tmp_path / "s.d3", encoder=encoder("s"), budget=30_000, seed=2, progress=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a resumed subtask ran its warm start or its teacher again")
    monkeypatch.setattr(d3, "fit_decoder", must_not_run)
    monkeypatch.setattr(d3, "train_teacher", must_not_run)
    compress(tiny_real, tmp_path / "s.d3", encoder=encoder("s"), budget=30_000, seed=1, progress=False)
    assert method_sections(tmp_path / "s.d3") == method_sections(tmp_path / "reference.d3")
    groups = D3Dataset(tmp_path / "s.d3").meta["params"]["groups"]
    reference = D3Dataset(tmp_path / "reference.d3").meta["params"]["groups"]
    assert [g["stats"]["resumed_at_iteration"] for g in groups] == [5, 3]
    assert [g["stats"]["final_loss"] for g in groups] == [g["stats"]["final_loss"] for g in reference]
    assert [g["stats"]["teacher_accuracy"] for g in groups] == [g["stats"]["teacher_accuracy"] for g in reference]
    assert not list(tmp_path.glob("s.g*.ckpt"))
