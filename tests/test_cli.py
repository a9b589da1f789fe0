"""The d3 command line end to end on a generated folder dataset."""

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from d3codec import D3Dataset
from d3codec.cli.main import main
from d3codec.format.container import Section, encode_archive


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_compress_info_expand(image_folder, tmp_path):
    out = tmp_path / "f.d3"
    r = run(
        "compress",
        "dm",
        image_folder,
        "--resolution",
        16,
        "--budget",
        8000,
        "--iterations",
        3,
        "--real-per-class",
        4,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert out.stat().st_size <= 8000 and "bytes of a 8000-byte budget" in r.output

    r = run("info", out)
    first = r.output.splitlines()[0]
    assert r.exit_code == 0 and f"{out.stat().st_size:,} bytes of a 8,000-byte budget" in first
    assert "pixel (objective dm: " in first and "uint8 images per class" in first  # "(N in all)" where classes differ
    assert ") · folder: 3 classes of 3×16×16" in first
    assert '"classes"' not in r.output and '"classes"' in run("info", out, "--meta").output  # metadata on request
    info = json.loads(run("info", out, "--json").output)
    assert sum(row["stored"] for row in info["bytes"][:-1]) == out.stat().st_size == info["file_bytes"]
    assert info["meta"]["dataset"]["classes"] == ["class_0", "class_1", "class_2"]

    ds = D3Dataset(out)
    r = run("expand", out, "-o", tmp_path / "png", "--grid", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    folders = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert folders == ["0_class_0", "1_class_1", "2_class_2"]
    assert sum(1 for _ in (tmp_path / "png").rglob("*.png")) == len(ds)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[1] == 3 * (16 + 2) + 2  # a row per class
    n = int(ds.labels.bincount().max())  # images in the fullest class (trimmed classes hold one fewer), under 20
    assert f"3 rows, the first {n} of up to {n} images per class" in r.output
    r = run("expand", out, "--grid", tmp_path / "plain.png", "--no-grid-names", "--grid-scale", 2)
    plain = Image.open(tmp_path / "plain.png")
    assert r.exit_code == 0 and plain.size == (2 * (n * (16 + 2) + 2), 2 * grid.size[1])
    assert grid.size[0] > plain.size[0] // 2  # the names' margin

    r = run("expand", out, "-o", tmp_path / "pt", "--format", "pt")
    assert r.exit_code == 0
    images = torch.load(tmp_path / "pt" / "images.pt")
    assert torch.equal(images, ds.images)


def test_no_method_named_runs_the_default_rule(image_folder, tmp_path):
    out = tmp_path / "d.d3"
    r = run(
        "compress",
        image_folder,
        "--resolution",
        16,
        "--ipc",
        1,
        "--iterations",
        2,
        "--real-per-class",
        4,
        "-o",
        out,
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert "method dm (no method named: DM through FreD's dct-variance ×3 with DANCE's" in r.output
    written = json.loads(r.output.strip().splitlines()[-1])
    config = written["params"]["config"]
    assert (config["formation"], config["formation_factor"], config["matching"]) == ("dct-variance", 3, "dance")
    assert written["params"]["formation"]["mask"]  # FreD's variance-ranked coefficients
    # options the user gives win, and a formation the user names keeps its own factor
    r = run(
        "compress",
        image_folder,
        "--resolution",
        16,
        "--ipc",
        3,
        "--iterations",
        1,
        "--real-per-class",
        4,
        "--formation",
        "pixels",
        "--matching",
        "dm",
        "-o",
        tmp_path / "p.d3",
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    config = json.loads(r.output.strip().splitlines()[-1])["params"]["config"]
    assert (config["formation"], config["formation_factor"], config["matching"]) == ("pixels", None, "dm")
    r = run(
        "compress",
        "dm",
        image_folder,
        "--resolution",
        16,
        "--ipc",
        1,
        "--iterations",
        1,
        "-o",
        tmp_path / "n.d3",
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0 and "no method named" not in r.output  # a named method keeps its preset
    assert json.loads(r.output.strip().splitlines()[-1])["params"]["config"]["formation"] == "pixels"


def test_impossible_budget_and_corrupt_archive_give_clear_errors(image_folder, tmp_path):
    r = run("compress", image_folder, "--resolution", 16, "--budget", 500, "-o", tmp_path / "x.d3", "--quiet")
    assert r.exit_code != 0 and "smallest budget that works" in r.output and not (tmp_path / "x.d3").exists()
    r = run("compress", image_folder, "--resolution", 16, "--budget", 20_000, "-o", tmp_path / "no" / "x.d3", "--quiet")
    assert r.exit_code != 0 and "cannot write to the folder" in r.output and "choose another --output" in r.output
    bad = tmp_path / "bad.d3"
    bad.write_bytes(b"not an archive at all")
    r = run("info", bad)
    assert r.exit_code != 0 and "not a .d3 archive" in r.output


def test_eval_with_random_real_baseline(tiny_real, tmp_path, monkeypatch):
    import d3codec.data
    from d3codec.encode.pipeline import compress
    from d3codec.methods.pixel import DMEncoder

    out = tmp_path / "t.d3"
    compress(
        tiny_real,
        out,
        encoder=DMEncoder.from_options("fast", iterations=2, real_per_class=4, embed_width=8),
        budget=6_000,
        progress=False,
    )
    monkeypatch.setattr(d3codec.data.sources, "load_dataset", lambda *a, **k: tiny_real)
    monkeypatch.setattr(d3codec.data.sources, "archive_dataset", lambda *a, **k: tiny_real)
    r = run(
        "eval",
        out,
        "--epochs",
        3,
        "--runs",
        2,
        "--baseline",
        "random-real",
        "--device",
        "cpu",
        "--json",
        tmp_path / "r.json",
    )
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [row["name"] for row in rows] == [
        "archive (pixel)",
        "random real (float32)",
        "random real (PNG)",
        "random real (JPEG q20)",
    ]
    for row in rows:
        assert len(row["accuracies"]) == 2 and all(0 <= a <= 1 for a in row["accuracies"])
        assert row["bytes"] <= 6_000
    assert rows[1]["images"] == 6_000 // (16 * 16 * 4 * 3) * 3


def test_d3_compress_expand_any_count_and_merge(image_folder, tmp_path):
    out = tmp_path / "d.d3"
    r = run(
        "compress",
        "d3",
        image_folder,
        "--resolution",
        16,
        "--budget",
        20_000,
        "--iterations",
        2,
        "--real-per-class",
        4,
        "--prior-dtype",
        "int8",
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert out.stat().st_size <= 20_000 and "priors per class" in r.output and "int8 priors" in r.output
    info = json.loads(run("info", out, "--json").output)
    assert [row["name"] for row in info["bytes"]][1:-1] == ["meta", "priors", "decoder", "prior_labels"]

    r = run("expand", out, "-o", tmp_path / "png", "--samples-per-class", 4)
    assert r.exit_code == 0, r.output
    assert sum(1 for _ in (tmp_path / "png").rglob("*.png")) == 12

    # tensors keep the class each sample was drawn for beside its soft label
    assert run("expand", out, "-o", tmp_path / "st", "--format", "safetensors", "--samples-per-class", 2).exit_code == 0
    from safetensors.torch import load_file

    data = load_file(str(tmp_path / "st" / "data.safetensors"))
    assert sorted(data) == ["images", "labels", "soft_labels"]
    assert torch.equal(data["labels"], torch.arange(3).repeat_interleave(2)) and data["soft_labels"].shape == (6, 3)
    assert run("expand", out, "-o", tmp_path / "pt", "--format", "pt").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "pt").iterdir()) == ["images.pt", "labels.pt", "soft_labels.pt"]
    assert torch.load(tmp_path / "pt" / "labels.pt").dtype == torch.int64

    # DD-Ranking's hand-off: normalised images, class-major, soft labels as logits, and what describes them
    assert run("expand", out, "-o", tmp_path / "dd", "--format", "ddranking", "--samples-per-class", 2).exit_code == 0
    ds = D3Dataset(out, samples_per_class=2)
    dd = {name: torch.load(tmp_path / "dd" / f"{name}.pt") for name in ("images", "labels", "soft_labels")}
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    assert torch.equal(dd["labels"], torch.arange(3).repeat_interleave(2))
    assert torch.allclose(dd["images"] * std + mean, ds.images, atol=1e-6)  # drawn class-major already
    assert torch.allclose(dd["soft_labels"].softmax(1), ds.soft_labels, atol=1e-3)  # float16 sums to 1 ± 1e-3
    described = json.loads((tmp_path / "dd" / "ddranking.json").read_text())
    assert (described["ipc"], described["im_size"], described["num_classes"]) == (2, [16, 16], 3)
    assert described["mean"] == list(ds.mean) and described["classes"] == ds.classes

    r = run("merge", out, out, "-o", tmp_path / "m.d3")
    assert r.exit_code != 0 and "disjoint classes" in r.output and not (tmp_path / "m.d3").exists()


def test_a_saved_teacher_is_reused_and_the_warm_start_can_be_skipped(image_folder, tmp_path):
    common = [
        "compress",
        "d3",
        image_folder,
        "--resolution",
        16,
        "--budget",
        20_000,
        "--iterations",
        1,
        "--real-per-class",
        4,
        "--teacher-epochs",
        0.5,
        "--device",
        "cpu",
        "--quiet",
        "--json",
    ]
    r = run(
        *common, "--warm-start-iterations", 0, "--save-teacher", tmp_path / "t.safetensors", "-o", tmp_path / "a.d3"
    )
    assert r.exit_code == 0, r.output
    first = json.loads(r.output.splitlines()[-1])
    assert (tmp_path / "t.safetensors").is_file() and first["params"]["config"]["init_iterations"] == 0
    assert (
        first["params"]["config"]["teacher_epochs"] == 0.5
        and "teacher_accuracy" in first["params"]["groups"][0]["stats"]
    )
    r = run(*common, "--teacher", tmp_path / "t.safetensors", "-o", tmp_path / "b.d3")
    assert r.exit_code == 0, r.output
    assert (
        "teacher_accuracy" not in json.loads(r.output.splitlines()[-1])["params"]["groups"][0]["stats"]
    )  # not trained
    # several subtasks train a teacher each: there is no one teacher to save
    r = run(*common, "--subtasks", 2, "--save-teacher", tmp_path / "u.safetensors", "-o", tmp_path / "c.d3")
    assert r.exit_code == 1 and "--subtasks 1" in r.output and not (tmp_path / "u.safetensors").exists()


def test_options_of_the_other_method_are_refused(image_folder, tmp_path):
    r = run("compress", image_folder, "--budget", 20_000, "--subtasks", 2, "-o", tmp_path / "x.d3", "--quiet")
    assert r.exit_code == 1 and "--subtasks is an option of d3, not of dm: d3 compress d3 DATASET" in r.output
    r = run("compress", image_folder, "--budget", 20_000, "--soft-labels", "-o", tmp_path / "x.d3", "--quiet")
    assert r.exit_code == 1 and "--soft-labels is an option of d3 and d2m, not of dm" in r.output
    r = run("compress", image_folder, "--budget", 20_000, "--no-soft-labels", "-o", tmp_path / "x.d3", "--quiet")
    assert r.exit_code == 1 and "--no-soft-labels is an option of d3 and d2m" in r.output
    r = run(
        "compress", "d3", image_folder, "--budget", 20_000, "--images-per-class", 2, "-o", tmp_path / "x.d3", "--quiet"
    )
    assert r.exit_code == 1 and "not of d3; use --priors-per-class" in r.output
    pixel = tmp_path / "p.d3"
    assert (
        run(
            "compress",
            "dm",
            image_folder,
            "--resolution",
            16,
            "--budget",
            8000,
            "--iterations",
            1,
            "-o",
            pixel,
            "--device",
            "cpu",
            "--quiet",
        ).exit_code
        == 0
    )
    r = run("expand", pixel, "-o", tmp_path / "out", "--samples-per-class", 3)
    assert r.exit_code != 0 and "stores its images" in r.output


def test_d2m_compress_expand_at_any_count_and_eval_with_resampling(tiny_real, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "g.d3"
    options = [
        "--resolution",
        16,
        "--budget",
        40_000,
        "--pretraining",
        "gan",
        "--pretrain-iterations",
        3,
        "--iterations",
        1,
        "--real-per-class",
        4,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    ]
    r = run("compress", "d2m", image_folder, *options, "--soft-labels")
    assert r.exit_code == 0, r.output
    assert out.stat().st_size <= 40_000 and "generator upconv-v2 of width" in r.output
    assert "teacher of width 32 for soft labels" in r.output and D3Dataset(out).soft_labels is not None
    assert (tmp_path / "g.d3.pretrain.safetensors").is_file()  # the checkpoint a killed run resumes from
    assert f"kept {tmp_path / 'g.d3.pretrain.safetensors'} (" in r.output  # and the user is told
    assert D3Dataset(out).meta["params"]["config"]["pretraining"] == "gan"
    r = run("expand", out, "-o", tmp_path / "png", "--samples-per-class", 5)
    assert r.exit_code == 0, r.output
    assert sum(1 for _ in (tmp_path / "png").rglob("*.png")) == 15

    r = run(
        "compress", "d2m", image_folder, "--budget", 30_000, "--images-per-class", 2, "-o", tmp_path / "x.d3", "--quiet"
    )
    assert r.exit_code != 0 and "--samples-per-class" in r.output
    r = run("compress", image_folder, "--budget", 30_000, "--task-balance", 2, "-o", tmp_path / "x.d3", "--quiet")
    assert r.exit_code == 1 and "--task-balance is an option of d2m, not of dm" in r.output

    import d3codec.data
    from d3codec.encode.pipeline import compress
    from d3codec.methods.d2m import D2MEncoder

    grey_folder_names = d3codec.data.real.RealData(
        tiny_real.name,
        ["class_0", "class_1", "class_2"],
        tiny_real.image_shape,
        tiny_real.mean,
        tiny_real.std,
        tiny_real.train_targets,
        tiny_real.train,
        tiny_real.test,
        tiny_real.train_images,
    )
    monkeypatch.setattr(d3codec.data.sources, "load_dataset", lambda *a, **k: grey_folder_names)
    monkeypatch.setattr(d3codec.data.sources, "archive_dataset", lambda *a, **k: grey_folder_names)
    r = run("eval", out, "--epochs", 1, "--runs", 1, "--device", "cpu")
    assert r.exit_code != 0 and "image shape" in r.output  # an RGB archive against grey data
    monkeypatch.setattr(d3codec.data.sources, "load_dataset", lambda *a, **k: tiny_real)
    monkeypatch.setattr(d3codec.data.sources, "archive_dataset", lambda *a, **k: tiny_real)
    grey = tmp_path / "grey.d3"
    compress(
        tiny_real,
        grey,
        progress=False,
        budget=20_000,
        encoder=D2MEncoder.from_options(
            "fast",
            pretrain_iterations=2,
            pretrain_batch=8,
            disc_width=4,
            iterations=1,
            synthetic_per_class=4,
            real_per_class=4,
            embed_width=8,
            teacher_epochs=1.0,
            teacher_width=8,
        ),
    )
    r = run(
        "eval",
        grey,
        "--epochs",
        2,
        "--runs",
        1,
        "--model",
        "mlp",
        "--samples-per-class",
        3,
        "--resample-every-epoch",
        "--device",
        "cpu",
        "--json",
        tmp_path / "r.json",
    )
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert rows[0]["name"] == "archive (d2m)" and rows[0]["images"] == 9 and "mlp" in r.output


def test_bptt_compress_and_eval_replays_the_schedule_beside_standard_training(
    tiny_real, image_folder, tmp_path, monkeypatch
):
    out = tmp_path / "b.d3"
    r = run(
        "compress",
        "bptt",
        image_folder,
        "--resolution",
        16,
        "--budget",
        8_000,
        "--init",
        "random",
        "--images-per-class",
        2,
        "--inner-epochs",
        1,
        "--iterations",
        2,
        "--real-per-class",
        4,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    assert "2 uint8 images per class, 2 steps × 1 epochs" in r.output
    info = json.loads(run("info", out, "--json").output)
    assert [row["name"] for row in info["bytes"]][1:-1] == ["meta", "images", "schedule"]
    r = run("expand", out, "-o", tmp_path / "st", "--format", "safetensors")
    assert r.exit_code == 0, r.output
    from safetensors import safe_open

    with safe_open(str(tmp_path / "st" / "schedule.safetensors"), "pt") as f:
        assert f.metadata()["network"] == "lenet" and list(f.keys()) == ["step_sizes"]  # random init: no θ₀
        assert torch.equal(f.get_tensor("step_sizes"), D3Dataset(out).schedule.lrs)
    r = run("compress", image_folder, "--budget", 8_000, "--init", "random", "-o", tmp_path / "x.d3", "--quiet")
    assert r.exit_code == 1 and "--init is an option of bptt, not of dm" in r.output

    import d3codec.data
    from d3codec.encode.pipeline import compress
    from d3codec.methods.pixel import BPTTEncoder

    grey = tmp_path / "grey.d3"
    compress(
        tiny_real,
        grey,
        encoder=BPTTEncoder.from_options("fast", iterations=2, real_per_class=4, init="random", images_per_class=2),
        budget=8_000,
        progress=False,
    )
    monkeypatch.setattr(d3codec.data.sources, "load_dataset", lambda *a, **k: tiny_real)
    monkeypatch.setattr(d3codec.data.sources, "archive_dataset", lambda *a, **k: tiny_real)
    r = run(
        "eval",
        grey,
        "--epochs",
        2,
        "--runs",
        2,
        "--training",
        "both",
        "--baseline",
        "random-real",
        "--device",
        "cpu",
        "--json",
        tmp_path / "r.json",
    )
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [row["name"].split(",")[0] for row in rows] == [
        "archive (pixel",
        "archive (pixel)",
        "random real (same count",
        "random real (float32)",
        "random real (PNG)",
        "random real (JPEG q20)",
    ]
    assert "replayed lenet schedule of 2×5 steps" in rows[0]["name"] and rows[2]["images"] == 6
    assert all(len(row["accuracies"]) == 2 for row in rows)

    # from a stored θ₀ every replay is the same computation: it runs once, whatever --runs says
    fixed = tmp_path / "fixed.d3"
    compress(
        tiny_real,
        fixed,
        encoder=BPTTEncoder.from_options("fast", iterations=1, real_per_class=4, images_per_class=1),
        budget=200_000,
        progress=False,
    )
    r = run("eval", fixed, "--runs", 3, "--training", "replay", "--device", "cpu", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert len(row["accuracies"]) == 1 and "one run" in row["name"]
    pixel = tmp_path / "p.d3"
    from d3codec.methods.pixel import DMEncoder

    compress(
        tiny_real,
        pixel,
        encoder=DMEncoder.from_options("fast", iterations=1, real_per_class=4, embed_width=8),
        budget=6_000,
        progress=False,
    )
    r = run("eval", pixel, "--training", "replay", "--runs", 1, "--device", "cpu")
    assert r.exit_code != 0 and "carries no training schedule" in r.output


def test_verify_passes_a_good_archive_and_names_the_first_failure(tiny_real, tmp_path):
    from d3codec.encode.pipeline import compress
    from d3codec.format.container import D3Reader
    from d3codec.methods.pixel import BPTTEncoder

    out = tmp_path / "b.d3"
    compress(
        tiny_real,
        out,
        encoder=BPTTEncoder.from_options("fast", iterations=1, real_per_class=4, images_per_class=2),
        budget=100_000,
        progress=False,
    )
    r = run("verify", out)
    assert r.exit_code == 0 and "verified" in r.output, r.output
    assert "ok      byte accounting:" in r.output and "lenet schedule of 2×5 steps" in r.output

    data = bytearray(out.read_bytes())
    images = D3Reader(bytes(data)).info("images")
    data[images.offset + images.stored_length // 2] ^= 0x10  # one bit inside the image section
    (tmp_path / "flip.d3").write_bytes(bytes(data))
    r = run("verify", tmp_path / "flip.d3")
    assert r.exit_code == 1 and "FAILED  sections:" in r.output and "checksum mismatch" in r.output

    (tmp_path / "cut.d3").write_bytes(out.read_bytes()[:-5])
    r = run("verify", tmp_path / "cut.d3")
    assert r.exit_code == 1 and "FAILED  container:" in r.output and "truncated" in r.output

    over = tmp_path / "over.d3"
    compress(
        tiny_real,
        over,
        encoder=BPTTEncoder.from_options("fast", iterations=1, real_per_class=4, init="random", images_per_class=2),
        budget=100_000,
        progress=False,
    )
    reader = D3Reader(over)
    meta = reader.read_json("meta")
    meta["budget"]["bytes"] = 1_000  # an archive that claims a budget its size breaks
    sections = [Section.json("meta", meta)] + [
        Section.tensors(n, reader.read_tensors(n)) for n in ("images", "schedule")
    ]
    (tmp_path / "lie.d3").write_bytes(encode_archive(sections))
    r = run("verify", tmp_path / "lie.d3")
    assert r.exit_code == 1 and "FAILED  byte accounting:" in r.output and "over its budget.bytes of 1000" in r.output


def test_resume_insists_on_a_checkpoint_and_restart_deletes_it(image_folder, tmp_path):
    out = tmp_path / "r.d3"
    args = [
        "compress",
        image_folder,
        "--resolution",
        16,
        "--budget",
        8_000,
        "--iterations",
        2,
        "--real-per-class",
        4,
        "-o",
        out,
        "--device",
        "cpu",
        "--quiet",
    ]
    r = run(*args, "--resume")
    assert r.exit_code != 0 and "no checkpoint of" in r.output and not out.exists()

    checkpoint = tmp_path / "r.d3.ckpt.safetensors"
    checkpoint.write_bytes(b"not a checkpoint")
    r = run(*args)  # taken up by default: a file that is not a checkpoint is refused, not overwritten
    assert r.exit_code != 0 and "delete it" in r.output and "--restart" in r.output
    assert checkpoint.exists() and not out.exists()
    r = run(*args, "--restart")
    assert r.exit_code == 0, r.output
    assert out.exists() and not checkpoint.exists()


def test_a_library_error_names_the_commands_flag_for_a_field():
    import click

    from d3codec.cli.options import fail

    @click.command()
    @click.option("--label-top-k", "label_top_k", type=int)
    def command(label_top_k):
        fail(ValueError(f"`label_top_k` must be from 0 to 9, not {label_top_k}; `elsewhere` is no option here"))

    r = CliRunner().invoke(command, ["--label-top-k", "12"])
    assert r.exit_code == 1 and "--label-top-k must be from 0 to 9, not 12; elsewhere is no option here" in r.output


def test_a_refused_seed_names_the_flag(image_folder, tmp_path):
    from d3codec.encode.pipeline import compress

    with pytest.raises(ValueError, match="`seed` must be an integer"):
        compress(image_folder, tmp_path / "x.d3", budget=8000, seed=-1)
