"""Sampled archives decoded image by image: any few images of a draw, the same as the whole draw's."""

from pathlib import Path

import numpy as np
import pytest
import torch

from d3codec.decode.dataset import decode_archive
from d3codec.format import noise
from d3codec.format.container import Content, D3Reader, Section, encode_archive
from d3codec.format.limits import DEFAULT_LIMITS
from d3codec.format.meta import open_archive

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
SAMPLED = [
    "d3-int8-two-groups.d3",
    "d3-float16-rgb.d3",
    "d3-tapered-topk.d3",
    "d2m-int8.d3",
    "d2m-int8-teacher.d3",
    "d2m-upconv-v1.d3",
]


def sampler_of(data: bytes):
    reader, meta = open_archive(data)
    with reader:
        return decode_archive(reader, meta, 1, 0, "cpu", DEFAULT_LIMITS)[4]


def test_noise_at_chosen_coordinates_is_the_noise_of_the_whole_block():
    block = noise.normal(5, noise.D3_LATENT, (3, 7, 4))  # (A, N, Z)
    a, b = np.array([2, 0, 1, 2]), np.array([6, 0, 3, 6])
    assert np.array_equal(noise.normal_at(5, noise.D3_LATENT, a, b, 4), block[a, b])
    assert np.array_equal(noise.normal(5, noise.D3_LATENT, (3, 4, 4), first=3)[:, 0], block[:, 3])


@pytest.mark.parametrize("name", SAMPLED)
@pytest.mark.parametrize("per_class", [None, 3, 11])  # 11: more samples than some archives have priors
def test_any_images_of_a_draw_decode_alone_as_in_the_whole_draw(name, per_class):
    sampler = sampler_of((VECTORS / name).read_bytes())
    images, labels, soft = sampler.draw(per_class, seed=7)
    assert torch.equal(labels, sampler.labels(per_class))  # the labels come without decoding
    index = torch.tensor([len(labels) - 1, 0, 2, 2, len(labels) // 2])  # any order, repeats
    part, part_labels, part_soft = sampler.decode_at(per_class, 7, index)
    close = lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-6)  # noqa: E731  (other batches round otherwise)
    assert close(part, images[index]) and torch.equal(part_labels, labels[index])
    assert (part_soft is None) == (soft is None) and (soft is None or close(part_soft, soft[index]))
    with pytest.raises(IndexError, match=f"holds {len(labels)} images"):
        sampler.decode_at(per_class, 7, torch.tensor([len(labels)]))
    with pytest.raises(ValueError, match="positive integer"):
        sampler.decode_at(0, 7, index)


def test_a_format_1_0_archive_draws_whole_but_not_image_by_image():
    data = (VECTORS / "d2m-int8.d3").read_bytes()
    with D3Reader(data) as reader:
        sections = [Section(s.name, reader.read_bytes(s.name), Content(s.content), s.critical) for s in reader.sections]
    old = sampler_of(encode_archive(sections, minor=0))
    images, labels, _ = old.draw(2, seed=1)
    assert len(images) == len(labels) == 2 * old.num_classes
    with pytest.raises(ValueError, match="1.0 archive draws its images whole"):
        old.decode_at(2, 1, torch.tensor([0]))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["d3-tapered-topk.d3", "d2m-int8-teacher.d3"])
def test_a_sampled_archive_opens_lazily_and_gives_the_draws_images_by_index_batch_and_worker(name):
    from d3codec import D3Dataset

    data = (VECTORS / name).read_bytes()
    ds = D3Dataset(data, samples_per_class=5, seed=3)
    assert ds.lazy and ds._images is None and "decoded on demand" in repr(ds)
    whole = D3Dataset(data, samples_per_class=5, seed=3)
    images, soft = whole.images, whole.soft_labels  # the whole draw, decoded once
    assert soft is not None and ds._images is None  # the other dataset decoded nothing yet
    image, target = ds[len(ds) - 1]
    assert close(image, images[-1]) and close(target, soft[-1]) and ds[-1][0].shape == image.shape
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=2)
    batches = list(loader)  # each worker opens the archive itself
    assert close(torch.cat([x for x, _ in batches]), images) and close(torch.cat([y for _, y in batches]), soft)
    assert ds._images is None  # nothing held whole by the main process

    ds.set_epoch(2)  # another draw: that of seed + 2
    fresh, _, fresh_soft = ds.draw(5, seed=5)
    assert close(ds[0][0], fresh[0]) and close(ds.images, fresh) and close(ds.soft_labels, fresh_soft)
    assert not close(ds.images, images)
    with pytest.raises(ValueError, match="non-negative"):
        ds.set_epoch(-1)
    hard = D3Dataset(data, samples_per_class=5, seed=3, targets="hard")
    assert isinstance(hard[0][1], int) and hard.soft_labels is None and hard.labels.tolist() == whole.labels.tolist()


def test_stored_images_are_decoded_at_once_and_do_not_draw_anew():
    from d3codec import D3Dataset

    ds = D3Dataset((VECTORS / "pixel-uint8.d3").read_bytes())
    assert not ds.lazy and ds._images is not None
    with pytest.raises(ValueError, match="stores its images"):
        ds.set_epoch(1)
    images, labels, _ = ds.batch([1, 0])
    assert torch.equal(images, ds.images[[1, 0]]) and torch.equal(labels, ds.labels[[1, 0]])


def test_expand_refuses_more_files_or_bytes_than_allowed_before_writing_and_streams_what_it_writes(tmp_path):
    from click.testing import CliRunner

    from d3codec import D3Dataset
    from d3codec.cli.main import main
    from d3codec.decode.expand import output_size

    path = tmp_path / "g.d3"
    path.write_bytes((VECTORS / "d2m-int8.d3").read_bytes())
    ds = D3Dataset(path, samples_per_class=40)
    files, size = output_size(ds, "png")
    assert files == len(ds) and size >= len(ds) * ds.image_shape[0] * ds.image_shape[1] * ds.image_shape[2]
    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a])  # noqa: E731
    refused = run("expand", path, "-o", tmp_path / "png", "--samples-per-class", 40, "--max-files", files - 1)
    assert (
        refused.exit_code != 0 and f"raise --max-files to {files}" in refused.output and not (tmp_path / "png").exists()
    )
    refused = run(
        "expand", path, "-o", tmp_path / "pt", "--format", "pt", "--samples-per-class", 40, "--max-output-bytes", 1000
    )
    assert refused.exit_code != 0 and "--max-output-bytes" in refused.output and not (tmp_path / "pt").exists()
    written = run("expand", path, "-o", tmp_path / "png", "--samples-per-class", 40, "--grid", tmp_path / "g.png")
    assert written.exit_code == 0, written.output
    assert sum(1 for _ in (tmp_path / "png").rglob("*.png")) == len(ds) and ds._images is None


def test_a_d3_sampler_keeps_the_prior_orders_of_one_seed_only():
    sampler = sampler_of((VECTORS / "d3-int8-two-groups.d3").read_bytes())
    every = torch.arange(len(sampler.labels(3)))
    for seed in (1, 2, 3):  # set_epoch and --resample-every-epoch draw under a new seed every epoch
        sampler.decode_at(3, seed, every)
    assert sampler._orders and {key[0] for key in sampler._orders} == {3}  # what the decode limits counted


def test_a_worker_forked_from_a_gpu_process_reloads_the_archive_on_the_cpu():
    from d3codec import D3Dataset

    ds = D3Dataset((VECTORS / "d2m-int8.d3").read_bytes(), samples_per_class=2)
    first = ds.sampler()
    assert ds.sampler() is first  # the opening process keeps its sampler
    ds._device, ds._loaded_in = torch.device("cuda"), -1  # as a DataLoader worker forked from a CUDA process sees it
    again = ds.sampler()
    assert again is not first and str(again.device) == "cpu" and ds.sampler() is again
    assert close(ds[1][0], D3Dataset((VECTORS / "d2m-int8.d3").read_bytes(), samples_per_class=2)[1][0])


def test_a_student_trains_on_a_lazy_dataset_a_batch_at_a_time_as_on_its_tensors(monkeypatch):
    from d3codec import D3Dataset
    from d3codec.evaluation import students

    data = (VECTORS / "d2m-int8-teacher.d3").read_bytes()
    ds = D3Dataset(data, samples_per_class=6)
    k, shape = len(ds.classes), ds.image_shape
    test = (torch.rand(8, *shape, generator=torch.Generator().manual_seed(0)), torch.arange(8) % k)
    weights = []
    tested = students.test_accuracy
    monkeypatch.setattr(
        students,
        "test_accuracy",
        lambda net, *a: (weights.append({n: v.clone() for n, v in net.state_dict().items()}), tested(net, *a))[1],
    )
    config = students.StudentConfig(model="mlp", epochs=3, batch_size=4, dsa=False, compile="off")
    students.train_student(ds.images, ds.soft_labels, k, ds.mean, ds.std, test, config, seed=1)
    lazy = D3Dataset(data, samples_per_class=6)
    students.train_student(lazy, None, k, lazy.mean, lazy.std, test, config, seed=1)
    assert lazy._images is None  # never decoded whole
    assert all(torch.allclose(weights[0][n], weights[1][n], atol=1e-5) for n in weights[0])
    with pytest.raises(ValueError, match="set_epoch"):
        students.train_student(lazy, None, k, lazy.mean, lazy.std, test, config, resample=lambda e: None)


def test_evaluate_streams_a_lazy_draw_too_large_to_hold(tiny_real, tmp_path, monkeypatch):
    import d3codec
    from d3codec import D3Dataset
    from d3codec.evaluation import protocol as evaluation
    from d3codec.methods.d2m import D2MEncoder

    path = tmp_path / "g.d3"
    encoder = D2MEncoder.from_options(
        "fast",
        None,
        None,
        None,
        pretrain_iterations=2,
        pretrain_batch=8,
        disc_width=4,
        iterations=1,
        synthetic_per_class=4,
        real_per_class=6,
        embed_width=8,
        noise_dim=4,
        embed_dim=4,
    )
    d3codec.compress(tiny_real, path, encoder=encoder, budget=12_000, progress=False)
    monkeypatch.setattr(evaluation, "STREAM_ABOVE_BYTES", 0)  # every draw counts as too large
    monkeypatch.setattr(D3Dataset, "_materialise", lambda self: pytest.fail("the draw was decoded whole"))
    result = d3codec.evaluate(path, dataset=tiny_real, device="cpu", epochs=2, runs=1, model="mlp")
    assert result.rows[0].name.startswith("archive (d2m") and 0 <= result.rows[0].accuracies[0] <= 1
