"""Real datasets: finding them offline, loading them through torchvision, sampling them per class.

``load_dataset(name, data_root)`` returns a :class:`RealData`. Small datasets (Fashion-MNIST,
MNIST, CIFAR) are held in memory as uint8; folder datasets (ImageNet, any class-per-folder tree)
stay on disk and are read image by image, so ImageNet never has to fit in memory.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .errors import D3DatasetError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# (mean, std) per channel, as the field uses them
NORMALISATION = {
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet")


def default_data_root() -> Path:
    """$D3CODEC_DATA, else ~/.cache/d3codec/data."""
    return Path(os.environ.get("D3CODEC_DATA", Path.home() / ".cache" / "d3codec" / "data"))


@dataclass
class RealData:
    """A labelled real image dataset, train split (and test split where one exists).

    Attributes:
        name: dataset name as stored in archives.
        classes: class names, index = label.
        image_shape: (C, H, W).
        mean, std: per-channel normalisation.
        train_targets: (N,) int64 labels of the training split.
        train_images: (N, C, H, W) uint8 when held in memory, else None (read via ``train``).
        train, test: torch Datasets yielding (image (C, H, W) float32 in [0, 1], label).
    """

    name: str
    classes: list[str]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_targets: torch.Tensor
    train: Dataset
    test: Dataset | None = None
    train_images: torch.Tensor | None = None
    _indices: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self):
        order = torch.argsort(self.train_targets, stable=True)
        counts = torch.bincount(self.train_targets, minlength=len(self.classes)).tolist()
        self._indices = list(torch.split(order, counts))
        empty = [self.classes[c] for c, n in enumerate(counts) if n == 0]
        if empty:
            raise D3DatasetError(f"dataset {self.name!r} has classes without images: {', '.join(empty[:10])}; "
                                 "remove their folders or add images")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_indices(self, c: int) -> torch.Tensor:
        """(n_c,) int64 indices of class ``c`` in the training split."""
        return self._indices[c]

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """Training images at ``indices``: (n, C, H, W) float32 in [0, 1]."""
        if self.train_images is not None:
            return self.train_images[indices].float() / 255
        return torch.stack([self.train[int(i)][0] for i in indices])

    def sample_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training images of class ``c`` (without replacement where possible).

        Returns: (n, C, H, W) float32 in [0, 1].
        """
        idx = self._indices[c]
        if n <= len(idx):
            pick = idx[torch.randperm(len(idx), generator=generator)[:n]]
        else:
            pick = idx[torch.randint(len(idx), (n,), generator=generator)]
        return self.images_at(pick)


class Normalisation(torch.nn.Module):
    """Per-channel normalisation of images (N, C, H, W): ``norm(x)`` = (x − mean) / std, pixel space → the
    networks' input; ``norm.inverse(x)`` back. ``mean`` and ``std`` are C floats (RealData.mean, .std),
    kept as buffers, so that the module moves with ``.to(device)``."""

    def __init__(self, mean, std, device: torch.device | str = "cpu"):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1))

    @classmethod
    def of(cls, real: "RealData", device: torch.device | str = "cpu") -> "Normalisation":
        return cls(real.mean, real.std, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class ClassSampler:
    """Draws random training images of some classes (local index i → dataset class ``classes[i]``).

    In-memory datasets are sampled directly. For datasets on disk (ImageNet, folders), reading
    images every iteration would dominate, so up to ``cache_per_class`` random images of each
    class are read once and kept in memory as uint8: the real side then samples from that subset.
    """

    def __init__(self, real: RealData, classes: list[int], cache_per_class: int, generator: torch.Generator):
        self.real, self.classes = real, list(classes)
        self.cache = None
        if real.train_images is None:
            self.cache = [(real.sample_class(c, min(cache_per_class, len(real.class_indices(c))), generator) * 255)
                          .round().to(torch.uint8) for c in self.classes]  # each (n_c, C, H, W)

    def sample(self, i: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images of local class ``i``: (n, C, H, W) float32 in [0, 1]."""
        if self.cache is None:
            return self.real.sample_class(self.classes[i], n, generator)
        pool = self.cache[i]
        pick = torch.randperm(len(pool), generator=generator)[:n] if n <= len(pool) else \
            torch.randint(len(pool), (n,), generator=generator)
        return pool[pick].float() / 255


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and labels (N,) as a Dataset of float32 [0, 1] images."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255, int(self.targets[i])


def load_dataset(name: str, data_root: str | os.PathLike | None = None, resolution: int | None = None,
                 download: bool = True) -> RealData:
    """Find and load a real dataset.

    Args:
        name: "fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", or the path of a
            class-per-folder image tree (torchvision ImageFolder layout).
        data_root: where the data is (or goes); default :func:`default_data_root`.
        resolution: side length for ImageNet and folder datasets (images are resized and
            centre-cropped to it); default 64.
        download: let torchvision download MNIST/CIFAR where the network allows.
    Raises: D3DatasetError saying where it looked and how to provide the data.
    """
    root = Path(data_root) if data_root is not None else default_data_root()
    key = name.lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist"):
        return _fashion_mnist(root, download)
    if key == "mnist":
        return _torchvision_small("mnist", root, download)
    if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        return _torchvision_small(key.replace("-", ""), root, download)
    if key == "imagenet":
        return _imagenet(root, resolution or 64)
    path = Path(name)
    if path.is_dir():
        return _image_folder(path, path.name, resolution or 64, NORMALISATION["imagenet"])
    raise D3DatasetError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or the path of a folder with "
                         "one sub-folder of images per class")


def _fashion_mnist(root: Path, download: bool = True) -> RealData:
    from torchvision.datasets import FashionMNIST

    raw = root / "FashionMNIST" / "raw"
    looked = [str(raw)]
    if not all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        sources = [raw, DEBIAN_FASHION_MNIST]
        looked.append(str(DEBIAN_FASHION_MNIST))
        for src in sources:
            if all((src / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
                raw.mkdir(parents=True, exist_ok=True)
                for f in FASHION_MNIST_FILES:  # a unique temporary name: two processes may unpack at once
                    fd, tmp = tempfile.mkstemp(prefix=f".{f}.", suffix=".tmp", dir=raw)
                    with gzip.open(src / f"{f}.gz", "rb") as fin, os.fdopen(fd, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    os.replace(tmp, raw / f)
                break
    try:
        train = FashionMNIST(str(root), train=True, download=False)
        test = FashionMNIST(str(root), train=False, download=False)
    except RuntimeError:
        if not download:
            raise _fashion_mnist_missing(looked, "downloading was off") from None
        try:  # the network may allow it elsewhere
            train = FashionMNIST(str(root), train=True, download=True)
            test = FashionMNIST(str(root), train=False, download=True)
        except Exception as e:
            raise _fashion_mnist_missing(looked, f"the download failed ({type(e).__name__})") from None
    return _from_tensors("fashion-mnist", train.classes, train.data.unsqueeze(1), train.targets,
                         test.data.unsqueeze(1), test.targets)


def _fashion_mnist_missing(looked: list[str], why: str) -> D3DatasetError:
    return D3DatasetError(
        f"Fashion-MNIST not found: looked for the four idx files in {' and '.join(looked)} (as .gz or unpacked), "
        f"and {why}. Fix: on Debian 'apt-get install dataset-fashion-mnist', or pass --data-root DIR with "
        f"DIR/FashionMNIST/raw/ holding {', '.join(FASHION_MNIST_FILES)}")


def _torchvision_small(key: str, root: Path, download: bool) -> RealData:
    import numpy as np
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[key]
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as e:
        raise D3DatasetError(f"{key} not found under {root} and could not be downloaded ({type(e).__name__}: {e}). "
                             f"Fix: pass --data-root DIR where torchvision's {cls.__name__} files are, or allow the "
                             "download") from None

    def as_tensor(ds):
        data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
        data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
        return data.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)

    tr, te = as_tensor(train), as_tensor(test)
    return _from_tensors(key, list(train.classes), tr[0], tr[1], te[0], te[1])


def _from_tensors(name, classes, train_x, train_y, test_x, test_y) -> RealData:
    mean, std = NORMALISATION[name]
    train_y, test_y = train_y.long(), test_y.long()
    return RealData(name, list(classes), tuple(train_x.shape[1:]), mean, std, train_y,
                    TensorImages(train_x, train_y), TensorImages(test_x, test_y), train_images=train_x)


def _folder_transform(resolution: int):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.ToTensor()])


def _image_folder(path: Path, name: str, resolution: int, normalisation, test_path: Path | None = None) -> RealData:
    from torchvision.datasets import ImageFolder

    try:
        train = ImageFolder(str(path), transform=_folder_transform(resolution))
    except (FileNotFoundError, RuntimeError) as e:
        raise D3DatasetError(f"{path}: not a usable class-per-folder image tree ({e}). Fix: give a folder with one "
                             "sub-folder of images per class") from None
    test = None
    if test_path is not None and test_path.is_dir():
        test = ImageFolder(str(test_path), transform=_folder_transform(resolution))
    channels = train[0][0].shape[0]
    mean, std = normalisation
    if len(mean) != channels:
        mean, std = (0.5,) * channels, (0.5,) * channels
    return RealData(name, list(train.classes), (channels, resolution, resolution), tuple(mean), tuple(std),
                    torch.as_tensor(train.targets, dtype=torch.int64), train, test)


def _imagenet(root: Path, resolution: int) -> RealData:
    from torchvision.datasets import ImageNet

    candidates = [root / "imagenet", root]
    for base in candidates:
        if (base / "meta.bin").is_file() and (base / "train").is_dir():
            train = ImageNet(str(base), split="train", transform=_folder_transform(resolution))
            val = ImageNet(str(base), split="val", transform=_folder_transform(resolution)) \
                if (base / "val").is_dir() else None
            classes = [names[0] for names in train.classes]
            return RealData("imagenet", classes, (3, resolution, resolution), *NORMALISATION["imagenet"],
                            torch.as_tensor(train.targets, dtype=torch.int64), train, val)
        if (base / "train").is_dir():
            return _image_folder(base / "train", "imagenet", resolution, NORMALISATION["imagenet"], base / "val")
    raise D3DatasetError(f"ImageNet not found: looked for train/ (torchvision ImageNet layout with meta.bin, or "
                         f"ImageFolder layout) in {', '.join(map(str, candidates))}. Fix: pass --data-root DIR where "
                         "DIR/train/<class>/*.JPEG exists")
