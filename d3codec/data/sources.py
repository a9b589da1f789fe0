"""The datasets ``d3 compress`` knows by name, found offline where they can be: Fashion-MNIST from the Debian
package or the data root, MNIST and CIFAR through torchvision, ImageNet as a folder tree; ``load_dataset``
returns a :class:`~d3codec.data.real.RealData`."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch

from d3codec.data.folders import DraftLoader, _folder_transform, _image_folder, default_load_workers, safe_tree_class
from d3codec.data.real import RealData, TensorImages
from d3codec.errors import D3DatasetError
from d3codec.format.text import safe_text

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    resolution: int | None = None,
    download: bool = True,
    load_workers: int | None = None,
) -> RealData:
    """Find and load a real dataset.

    Args:
        name: "fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", or the path of a
            class-per-folder image tree (torchvision ImageFolder layout).
        data_root: where the data is (or goes); default :func:`default_data_root`.
        resolution: side length for ImageNet and folder datasets (images are resized and
            centre-cropped to it); default 64.
        download: let torchvision download MNIST/CIFAR where the network allows.
        load_workers: processes decoding a dataset on disk in parallel (default: one per core, at most 8;
            0: none).
    Raises: D3DatasetError saying where it looked and how to provide the data.
    """
    root = Path(data_root) if data_root is not None else default_data_root()
    key = registered_dataset(name)
    if key == "fashion-mnist":
        return _fashion_mnist(root, download)
    if key in ("mnist", "cifar10", "cifar100"):
        return _torchvision_small(key, root, download)
    if key == "imagenet":
        return _imagenet(root, resolution or 64, load_workers)
    path = Path(name)
    if path.is_dir():
        return _image_folder(path, path.name, resolution or 64, NORMALISATION["imagenet"], None, load_workers)
    raise D3DatasetError(
        f"unknown dataset {safe_text(repr(name), 200)}: use one of {', '.join(DATASETS)} or the "
        "path of a folder with one sub-folder of images per class"
    )


def registered_dataset(name: str) -> str | None:
    """The registered dataset (one of DATASETS) that ``name`` spells, or None: ``"FashionMNIST"`` and
    ``"fashion_mnist"`` are ``"fashion-mnist"``."""
    key = name.lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}
    key = aliases.get(key, key)
    return key if key in DATASETS else None


def archive_dataset(name: str, data_root: str | os.PathLike | None = None, resolution: int | None = None) -> RealData:
    """The real dataset an archive names in ``meta.dataset.name``: a label, never a path of this machine.

    A registered name (:data:`DATASETS`) loads as :func:`load_dataset` loads it. Any other name is a folder
    dataset's (d3codec stores the folder's own name), found only as a sub-folder of a ``data_root`` the user
    gives, and only when the name is one plain folder name (no separator, not ``.`` or ``..``, no control
    character): an archive cannot make a reader walk ``/proc`` or list ``/etc``.

    Raises: D3DatasetError naming the fix (pass the dataset, or the folder that holds it).
    """
    registered = registered_dataset(name)
    if registered is not None:
        return load_dataset(registered, data_root, resolution)
    shown = safe_text(repr(name), 120)
    plain = (
        0 < len(name) <= 255
        and name not in (".", "..")
        and not any(sep in name for sep in ("/", "\\", "\0"))
        and name.isprintable()
    )
    if data_root is None or not plain:
        raise D3DatasetError(
            f"the archive names the dataset {shown}, which is not one of {', '.join(DATASETS)}: "
            "pass the real `dataset` it was made from (a path, or a `data_root` holding a "
            "folder of that name)"
        )
    folder = Path(data_root) / name
    if not folder.is_dir() or folder.is_symlink():
        raise D3DatasetError(
            f"the archive names the folder dataset {shown}, and {safe_text(str(folder), 300)} is "
            "not a folder: pass the `dataset` folder it was made from"
        )
    return _image_folder(folder, folder.name, resolution or 64, NORMALISATION["imagenet"])


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
    return _from_tensors(
        "fashion-mnist", train.classes, train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets
    )


def _fashion_mnist_missing(looked: list[str], why: str) -> D3DatasetError:
    return D3DatasetError(
        f"Fashion-MNIST not found: looked for the four idx files in {' and '.join(looked)} (as .gz or unpacked), "
        f"and {why}. Fix: on Debian 'apt-get install dataset-fashion-mnist', or pass a `data_root` DIR with "
        f"DIR/FashionMNIST/raw/ holding {', '.join(FASHION_MNIST_FILES)}"
    )


def _torchvision_small(key: str, root: Path, download: bool) -> RealData:
    import numpy as np
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[key]
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as e:
        raise D3DatasetError(
            f"{key} not found under {root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Fix: pass a `data_root` DIR where torchvision's {cls.__name__} files are, or allow the "
            "download"
        ) from None

    def as_tensor(ds):
        data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
        data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
        return data.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)

    tr, te = as_tensor(train), as_tensor(test)
    return _from_tensors(key, list(train.classes), tr[0], tr[1], te[0], te[1])


def _from_tensors(name, classes, train_x, train_y, test_x, test_y) -> RealData:
    mean, std = NORMALISATION[name]
    train_y, test_y = train_y.long(), test_y.long()
    return RealData(
        name,
        list(classes),
        tuple(train_x.shape[1:]),
        mean,
        std,
        train_y,
        TensorImages(train_x, train_y),
        TensorImages(test_x, test_y),
        train_images=train_x,
    )


def _imagenet(root: Path, resolution: int, load_workers: int | None = None) -> RealData:
    SafeImageNet = safe_tree_class("ImageNet")
    candidates = [root / "imagenet", root]
    for base in candidates:
        if (base / "meta.bin").is_file() and (base / "train").is_dir():
            loader = DraftLoader(resolution)
            train = SafeImageNet(str(base), split="train", transform=_folder_transform(resolution), loader=loader)
            val = (
                SafeImageNet(str(base), split="val", transform=_folder_transform(resolution), loader=loader)
                if (base / "val").is_dir()
                else None
            )
            classes = [names[0] for names in train.classes]
            return RealData(
                "imagenet",
                classes,
                (3, resolution, resolution),
                *NORMALISATION["imagenet"],
                torch.as_tensor(train.targets, dtype=torch.int64),
                train,
                val,
                load_workers=default_load_workers() if load_workers is None else load_workers,
            )
        if (base / "train").is_dir():
            return _image_folder(
                base / "train", "imagenet", resolution, NORMALISATION["imagenet"], base / "val", load_workers
            )
    raise D3DatasetError(
        f"ImageNet not found: looked for train/ (torchvision ImageNet layout with meta.bin, or "
        f"ImageFolder layout) in {', '.join(map(str, candidates))}. Fix: pass a `data_root` DIR where "
        "DIR/train/<class>/*.JPEG exists"
    )
