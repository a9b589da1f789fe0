"""Federated D3: subtasks distilled on 2 CPU ranks (torch.distributed, gloo) equal the single-process run."""

import torch
from click.testing import CliRunner

from d3codec import D3Dataset
from d3codec.cli.main import main
from d3codec.container import D3Reader


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_two_ranks_and_one_process_give_the_same_images(image_folder, tmp_path):
    common = ["compress", "d3", image_folder, "--subtasks", 2, "--resolution", 16, "--budget", 30_000,
              "--iterations", 2, "--real-per-class", 4, "--seed", 3, "--device", "cpu", "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers runs; float sums depend on the thread count
    try:
        single = run(*common, "-o", tmp_path / "single.d3")
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, single.output
    ranks = run(*common, "--workers", 2, "-o", tmp_path / "ranks.d3")
    assert ranks.exit_code == 0, ranks.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "ranks.d3", "single.d3"]  # subtask files gone

    with D3Reader(tmp_path / "ranks.d3") as reader:
        meta = reader.read_json("meta")
    assert meta["stats"]["workers"] == 2 and [g["classes"] for g in meta["params"]["groups"]] == [[0, 1], [1, 3]]
    assert (tmp_path / "ranks.d3").stat().st_size <= 30_000
    a = D3Dataset(tmp_path / "single.d3", samples_per_class=5, seed=1)
    b = D3Dataset(tmp_path / "ranks.d3", samples_per_class=5, seed=1)
    assert a.classes == b.classes == ["class_0", "class_1", "class_2"]
    assert torch.equal(a.images, b.images) and torch.equal(a.soft_labels, b.soft_labels)
