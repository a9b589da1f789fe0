"""Federated runs on 2 CPU ranks (torch.distributed, gloo): D3's subtasks equal the single-process run; D2M
shares its classes."""

import torch
from click.testing import CliRunner

from d3codec import D3Dataset
from d3codec.cli.main import main
from d3codec.format.container import D3Reader


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_two_ranks_and_one_process_give_the_same_images(image_folder, tmp_path):
    common = [
        "compress",
        "d3",
        image_folder,
        "--subtasks",
        2,
        "--resolution",
        16,
        "--budget",
        30_000,
        "--iterations",
        2,
        "--real-per-class",
        4,
        "--seed",
        3,
        "--device",
        "cpu",
        "--quiet",
    ]
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


def _exchange(device, path):
    """On each of 2 ranks: sum per-rank gradients, broadcast rank 0's weights; write what each rank holds."""
    from d3codec.encode import federated

    net = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(net.weight, float(federated.rank()))  # rank 0 holds zeros, rank 1 ones
    net.weight.grad = torch.full_like(net.weight, federated.rank() + 1.0)  # bias: no gradient on either rank
    federated.sum_gradients(list(net.parameters()))
    federated.broadcast_parameters(net)
    torch.save(
        {
            "weight": net.weight.detach(),
            "grad": net.weight.grad,
            "bias_grad": net.bias.grad,
            "loss": federated.sum_over_ranks(1.5),
        },
        f"{path}.{federated.rank()}",
    )


def test_ranks_sum_gradients_and_take_rank_zeros_weights(tmp_path):
    from d3codec.encode.federated import run_ranks

    run_ranks(2, _exchange, (str(tmp_path / "rank"),))
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank.{r}")
        assert torch.equal(got["weight"], torch.zeros(2, 3))  # rank 0's
        assert torch.equal(got["grad"], torch.full((2, 3), 3.0)) and torch.equal(got["bias_grad"], torch.zeros(2))
        assert got["loss"] == 3.0


def test_d2m_shares_its_classes_across_two_ranks(image_folder, tmp_path):
    """D2M is data-parallel: under 2 ranks each fine-tunes half of every iteration's classes, rank 0 writes."""
    from d3codec.encode.pipeline import compress_with_workers
    from d3codec.methods.d2m import D2MEncoder

    encoder = D2MEncoder.from_options(
        "fast",
        pretrain_iterations=2,
        pretrain_batch=4,
        disc_width=4,
        iterations=2,
        synthetic_per_class=2,
        real_per_class=3,
        embed_width=4,
        teacher_epochs=0.5,
        teacher_width=4,
        noise_dim=4,
        embed_dim=4,
    )
    result = compress_with_workers(
        2,
        str(image_folder),
        tmp_path / "ranks.d3",
        encoder=encoder,
        resolution=16,
        budget=30_000,
        seed=1,
        progress=False,
    )
    assert result.file_bytes <= 30_000 and result.params["generator_width"] >= 4
    ds = D3Dataset(tmp_path / "ranks.d3", samples_per_class=2)
    assert ds.images.shape == (6, 3, 16, 16) and torch.isfinite(ds.images).all()


def test_a_last_round_of_fewer_subtasks_takes_the_idle_cores():
    from d3codec.encode.federated import round_threads

    # ImageNet's 5 subtasks on 2 local ranks and 2 cores: rank 0 runs 0, 2, 4 and is alone in the last round
    assert [round_threads(i, 2, 5, 2) for i in range(5)] == [1, 1, 1, 1, 2]
    assert [round_threads(i, 3, 4, 12) for i in range(4)] == [4, 4, 4, 12]
    assert round_threads(0, 4, 4, 2) == 1  # never below one thread
