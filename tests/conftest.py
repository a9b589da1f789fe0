"""Small generated datasets, so every test runs on CPU in seconds without real data."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from d3codec.data.real import RealData, TensorImages

torch.set_num_threads(2)


def pattern_images(
    num_classes: int, per_class: int, size: int, channels: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) whose class is visible (a bright band at a class-specific row) plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            img = rng.integers(0, 60, size=(size, size, channels))
            row = (c * size) // num_classes
            img[row : row + max(1, size // num_classes)] = 220
            images.append(img.astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="session")
def experts_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("experts")


@pytest.fixture(autouse=True)
def expert_pool_in_a_temporary_folder(experts_cache, monkeypatch):
    """No test writes to ~/.cache: DANCE's expert pools (d3codec.nn.experts) go to one folder per session."""
    monkeypatch.setenv("D3CODEC_EXPERTS", str(experts_cache))


@pytest.fixture
def tiny_real() -> RealData:
    """3 classes of 16×16 grey images in memory, 20 per class for training and 10 for testing."""
    return make_tiny_real()


def make_tiny_real() -> RealData:
    """The data of the ``tiny_real`` fixture, for helpers that run outside pytest (fuzzing, workers)."""
    x, y = pattern_images(3, 20, 16, 1)
    tx, ty = pattern_images(3, 10, 16, 1, seed=1)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    train_x, test_x = to_t(x), to_t(tx)
    train_y, test_y = torch.from_numpy(y).long(), torch.from_numpy(ty).long()
    return RealData(
        "tiny",
        ["a", "b", "c"],
        (1, 16, 16),
        (0.3,),
        (0.35,),
        train_y,
        TensorImages(train_x, train_y),
        TensorImages(test_x, test_y),
        train_images=train_x,
    )


@pytest.fixture
def image_folder(tmp_path):
    """A class-per-folder tree of RGB PNGs (3 classes × 8 images, 20×20), torchvision ImageFolder layout."""
    x, y = pattern_images(3, 8, 20, 3)
    root = tmp_path / "folder"
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"class_{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return root


def write_idx(path, array: np.ndarray) -> None:
    """Write an MNIST-style idx file, gzip-compressed."""
    magic = 0x0800 | array.ndim
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    """A folder holding the four Fashion-MNIST .gz files (as Debian ships them), with 10 classes of fake images."""
    src = tmp_path / "debian"
    src.mkdir()
    x, y = pattern_images(10, 3, 28, 1)
    tx, ty = pattern_images(10, 2, 28, 1, seed=1)
    write_idx(src / "train-images-idx3-ubyte.gz", x[..., 0])
    write_idx(src / "train-labels-idx1-ubyte.gz", y)
    write_idx(src / "t10k-images-idx3-ubyte.gz", tx[..., 0])
    write_idx(src / "t10k-labels-idx1-ubyte.gz", ty)
    return src
