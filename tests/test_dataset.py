"""D3Dataset: the Dataset interface, targets, transforms, DataLoader, bad archives."""

import pytest
import torch
from torch.utils.data import DataLoader

from d3codec import D3Dataset, D3FormatError
from d3codec.encode.pipeline import base_meta
from d3codec.format.container import Section, encode_archive
from d3codec.format.storage import encode_images
from d3codec.methods import DatasetSpec

SPEC = DatasetSpec("toy", ("cat", "dog"), (1, 4, 4), (0.5,), (0.25,))


def archive(soft=False, extra=()):
    images = torch.linspace(0, 1, 4 * 16).reshape(4, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1])
    sections = [
        Section.json("meta", base_meta(SPEC, "pixel", 10_000, None, 0, "t")),
        Section.tensors("images", encode_images(images, labels, 2, "float32")),
    ]
    if soft:
        sections.append(
            Section.tensors(
                "soft_labels",
                {"soft_labels": torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]], dtype=torch.float16)},
            )
        )
    return encode_archive(sections + list(extra)), images


def test_dataset_interface():
    data, images = archive()
    ds = D3Dataset(data)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert ds.mean == (0.5,) and ds.std == (0.25,) and ds.image_shape == (1, 4, 4)
    image, target = ds[2]
    assert image.dtype == torch.float32 and image.shape == (1, 4, 4) and target == 1
    assert torch.equal(image, images[2])


def test_transforms_and_dataloader():
    data, images = archive()
    ds = D3Dataset(data, transform=lambda x: (x - 0.5) / 0.25, target_transform=lambda t: t + 10)
    x, y = next(iter(DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 1, 4, 4) and y.tolist() == [10, 10, 11, 11]
    assert torch.allclose(x, (images - 0.5) / 0.25)


def test_soft_and_hard_targets():
    data, _ = archive(soft=True)
    soft = D3Dataset(data)
    assert soft[0][1].shape == (2,) and soft[0][1].dtype == torch.float32 and abs(float(soft[0][1][0]) - 0.9) < 1e-3
    assert D3Dataset(data, targets="hard")[0][1] == 0
    with pytest.raises(ValueError, match="no soft labels"):
        D3Dataset(archive()[0], targets="soft")


def test_unknown_ancillary_section_is_skipped_unknown_critical_refused():
    data, _ = archive(extra=[Section.raw("x-comment", b"hi")])
    assert len(D3Dataset(data)) == 4
    with pytest.raises(D3FormatError, match="unknown critical section 'future'"):
        D3Dataset(archive(extra=[Section.raw("future", b"hi", critical=True)])[0])


@pytest.mark.parametrize(
    "meta_change",
    [
        {"format": "zip"},
        {"method": "mystery"},
        {"dataset": {"classes": []}},
        {"dataset": {"name": "t", "classes": ["a", "b"], "image_shape": [1, 4], "mean": [0], "std": [1]}},
        {"dataset": {"name": "t", "classes": ["a", "a"], "image_shape": [1, 4, 4], "mean": [0], "std": [1]}},
        {"dataset": {"name": "t", "classes": ["a", "b"], "image_shape": [1, 4, 4], "mean": [0], "std": [0]}},
    ],
)
def test_bad_metadata_raises_d3formaterror(meta_change):
    meta = {**base_meta(SPEC, "pixel", 10_000, None, 0, "t"), **meta_change}
    labels = torch.tensor([0, 1])
    data = encode_archive(
        [
            Section.json("meta", meta),
            Section.tensors("images", encode_images(torch.zeros(2, 1, 4, 4), labels, 2, "float32")),
        ]
    )
    with pytest.raises(D3FormatError):
        D3Dataset(data)


@pytest.mark.parametrize(
    "tensors",
    [
        {"images": torch.zeros(2, 1, 4, 4)},  # no labels
        {"images": torch.zeros(2, 1, 5, 4), "labels": torch.zeros(2, dtype=torch.uint8)},  # wrong shape
        {"images": torch.zeros(2, 1, 4, 4), "labels": torch.tensor([0, 7], dtype=torch.uint8)},  # label out of range
        {"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "labels": torch.zeros(2, dtype=torch.uint8)},  # no range
        {"images": torch.zeros(2, 1, 4, 4, dtype=torch.int32), "labels": torch.zeros(2, dtype=torch.uint8)},
    ],
)
def test_bad_image_tensors_raise_d3formaterror(tensors):
    data = encode_archive(
        [Section.json("meta", base_meta(SPEC, "pixel", 1, None, 0, "t")), Section.tensors("images", tensors)]
    )
    with pytest.raises(D3FormatError):
        D3Dataset(data)


def test_meta_must_come_first():
    data, _ = archive()
    meta = base_meta(SPEC, "pixel", 1, None, 0, "t")
    swapped = encode_archive(
        [
            Section.tensors("images", encode_images(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), 2, "float32")),
            Section.json("meta", meta),
        ]
    )
    with pytest.raises(D3FormatError, match="first section"):
        D3Dataset(swapped)
