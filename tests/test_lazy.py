"""Sampled archives decoded image by image: any few images of a draw, the same as the whole draw's."""

from pathlib import Path

import numpy as np
import pytest
import torch

from d3codec import noise
from d3codec.archive import open_archive
from d3codec.container import Content, D3Reader, Section, encode_archive
from d3codec.dataset import decode_archive
from d3codec.limits import DEFAULT_LIMITS

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
SAMPLED = ["d3-int8-two-groups.d3", "d3-float16-rgb.d3", "d3-tapered-topk.d3", "d2m-int8.d3", "d2m-int8-teacher.d3",
           "d2m-upconv-v1.d3"]


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
