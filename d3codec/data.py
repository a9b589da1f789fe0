"""Real datasets: finding them offline, loading them through torchvision, sampling them per class.

``load_dataset(name, data_root)`` returns a :class:`RealData`. Small datasets (Fashion-MNIST,
MNIST, CIFAR) are held in memory as uint8; folder datasets (ImageNet, any class-per-folder tree)
stay on disk, so ImageNet never has to fit in memory: the images a method asks for are decoded by
``load_workers`` DataLoader processes in parallel (JPEGs decoded at a reduced scale where the target
resolution allows: PIL's ``draft``), and the per-class caches of :class:`ClassSampler` hold at most
REAL_CACHE_BYTES of decoded uint8 images.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from d3codec.errors import D3DatasetError
from d3codec.format.text import safe_text

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
REAL_CACHE_BYTES = 2 << 30  # decoded real images a ClassSampler keeps of a dataset on disk, at most
PARALLEL_READ_MIN = 64  # reads of fewer images stay in this process
# what a folder dataset may hold, checked before anything is decoded: its tree is walked without following
# directory links, to at most MAX_FOLDER_DEPTH levels below a class folder and MAX_FOLDER_ENTRIES entries in
# all (ImageNet's training set has 1.3 million), and an image is opened only if it is a regular file of at
# most MAX_IMAGE_FILE_BYTES whose header declares at most MAX_IMAGE_PIXELS pixels (after a JPEG's reduced-scale
# draft) and sides at most MAX_ASPECT_RATIO times apart
MAX_FOLDER_CLASSES = 100_000  # d3codec.format.meta.MAX_CLASSES: an archive cannot hold more
MAX_FOLDER_DEPTH = 16
MAX_FOLDER_ENTRIES = 20_000_000
MAX_IMAGE_FILE_BYTES = 256 << 20
MAX_IMAGE_PIXELS = 1 << 25  # 5 792 × 5 792: decoded as RGB, 100 MB before resizing
MAX_ASPECT_RATIO = 16


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
        load_workers: DataLoader processes that decode images of a dataset on disk in parallel (0: this
            process alone).
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
    load_workers: int = 0
    partial: bool = False  # a subset of some classes (RealData.in_memory): the others may have no images
    _indices: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self):
        order = torch.argsort(self.train_targets, stable=True)
        counts = torch.bincount(self.train_targets, minlength=len(self.classes)).tolist()
        self._indices = list(torch.split(order, counts))
        empty = [self.classes[c] for c, n in enumerate(counts) if n == 0]
        if empty and not self.partial:
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
        return self.read_uint8(indices).float() / 255

    def in_memory(self, classes: list[int], per_class: int, generator: torch.Generator,
                  max_bytes: int = REAL_CACHE_BYTES) -> "RealData":
        """This dataset where its training images are in memory; for one on disk, a copy holding up to
        ``per_class`` random training images of each of ``classes`` (all of a smaller class), fewer where
        that would pass ``max_bytes`` of uint8 images (at least one a class), read once in parallel. The
        copy's classes, normalisation and test split are this dataset's; it holds no images of other
        classes (``partial``)."""
        if self.train_images is not None:
            return self
        fits = max(1, max_bytes // (math.prod(self.image_shape) * max(1, len(classes))))
        picks = []
        for c in classes:
            idx = self._indices[c]
            picks.append(idx[torch.randperm(len(idx), generator=generator)[:min(per_class, fits, len(idx))]])
        chosen = torch.cat(picks)
        images, targets = self.read_uint8(chosen), self.train_targets[chosen]
        return RealData(self.name, self.classes, self.image_shape, self.mean, self.std, targets,
                        TensorImages(images, targets), self.test, images, self.load_workers, partial=True)

    def read_uint8(self, indices: torch.Tensor) -> torch.Tensor:
        """Training images at ``indices`` as (n, C, H, W) uint8 (rounded from [0, 1]); a dataset on disk is
        decoded by ``load_workers`` processes in parallel when there are many."""
        if self.train_images is not None:
            return self.train_images[indices]
        out = torch.empty(len(indices), *self.image_shape, dtype=torch.uint8)
        guarded = _Guarded(self.train)
        if len(indices) < PARALLEL_READ_MIN or self.load_workers < 1:
            batches = (_to_uint8([guarded[i]]) for i in indices.tolist())
        else:  # in order: batch b holds images 32·b …
            batches = DataLoader(Subset(guarded, indices.tolist()), batch_size=32, num_workers=self.load_workers,
                                 collate_fn=_to_uint8)
        at = 0
        for batch in batches:
            if isinstance(batch, str):  # a file that could not be read, named in one line
                raise D3DatasetError(batch)
            out[at:at + len(batch)] = batch
            at += len(batch)
        return out

    def pick_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """The indices (n,) int64 of ``n`` random training images of class ``c`` (without replacement where
        possible): what :meth:`sample_class` reads."""
        idx = self._indices[c]
        if n <= len(idx):
            return idx[torch.randperm(len(idx), generator=generator)[:n]]
        return idx[torch.randint(len(idx), (n,), generator=generator)]

    def sample_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training images of class ``c`` (without replacement where possible).

        Returns: (n, C, H, W) float32 in [0, 1].
        """
        return self.images_at(self.pick_class(c, n, generator))

    def sample_classes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training images of every class, class by class (:meth:`sample_class`).

        Returns: (K·n, C, H, W) float32 in [0, 1], class-major.
        """
        return torch.cat([self.sample_class(c, n, generator) for c in range(self.num_classes)])


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


def _to_uint8(batch: list[tuple[torch.Tensor | None, str | None]]) -> torch.Tensor | str:
    """A batch of _Guarded items (image (C, H, W) float32 in [0, 1], None) as (B, C, H, W) uint8, or the
    first item's reason (a string) where one could not be read."""
    for image, error in batch:
        if error is not None:
            return error
    return (torch.stack([image for image, _ in batch]) * 255).round().to(torch.uint8)


class ClassSampler:
    """Draws random training images of some classes (local index i → dataset class ``classes[i]``).

    In-memory datasets are sampled directly. For datasets on disk (ImageNet, folders), reading
    images every iteration would dominate, so up to ``cache_per_class`` random images of each
    class are read once (RealData.in_memory: in parallel, at most ``max_bytes``) and the real side
    samples from that subset, ``self.real``, which the method's other stages (teacher, warm start)
    can use as well.
    """

    def __init__(self, real: RealData, classes: list[int], cache_per_class: int, generator: torch.Generator,
                 max_bytes: int = REAL_CACHE_BYTES):
        self.classes = list(classes)
        self.real = real.in_memory(self.classes, cache_per_class, generator, max_bytes)

    def sample(self, i: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images of local class ``i``: (n, C, H, W) float32 in [0, 1]."""
        return self.real.sample_class(self.classes[i], n, generator)


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and labels (N,) as a Dataset of float32 [0, 1] images."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255, int(self.targets[i])


def load_dataset(name: str, data_root: str | os.PathLike | None = None, resolution: int | None = None,
                 download: bool = True, load_workers: int | None = None) -> RealData:
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
    raise D3DatasetError(f"unknown dataset {safe_text(repr(name), 200)}: use one of {', '.join(DATASETS)} or the "
                         "path of a folder with one sub-folder of images per class")


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
    plain = (0 < len(name) <= 255 and name not in (".", "..") and not any(sep in name for sep in ("/", "\\", "\0"))
             and name.isprintable())
    if data_root is None or not plain:
        raise D3DatasetError(f"the archive names the dataset {shown}, which is not one of {', '.join(DATASETS)}: "
                             "pass the real dataset it was made from (--dataset PATH, or --data-root DIR holding a "
                             "folder of that name)")
    folder = Path(data_root) / name
    if not folder.is_dir() or folder.is_symlink():
        raise D3DatasetError(f"the archive names the folder dataset {shown}, and {safe_text(str(folder), 300)} is "
                             "not a folder: pass --dataset PATH, the folder it was made from")
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


class DraftLoader:
    """Opens an image file as RGB, letting JPEG decode at 1/2, 1/4 or 1/8 scale (PIL's ``draft``) where the
    result still has both sides at least ``resolution`` (a 2 000-pixel photo read for 64 pixels decodes at
    1/8, several times faster, the scaling done in the DCT domain). Grayscale and CMYK become RGB, as
    torchvision's default loader makes them.

    Before decoding, from the file and the image's header: a regular file of at most MAX_IMAGE_FILE_BYTES,
    at most MAX_IMAGE_PIXELS pixels (after the draft) and sides at most MAX_ASPECT_RATIO times apart.
    Raises: D3DatasetError naming the file (escaped) and what is wrong with it, for these and for a file
    Pillow cannot read."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, path: str):
        import stat
        import warnings

        from PIL import Image, UnidentifiedImageError

        shown = safe_text(path, 300)
        try:
            with open(path, "rb", opener=_open_no_block) as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise D3DatasetError(f"{shown}: not a regular file; remove it from the dataset folder")
                if info.st_size > MAX_IMAGE_FILE_BYTES:
                    raise D3DatasetError(f"{shown}: {info.st_size:,} bytes, over the {MAX_IMAGE_FILE_BYTES:,} an "
                                         "image file may take; shrink or remove it")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    image = Image.open(f)
                if image.format == "JPEG":
                    image.draft("RGB", (self.resolution, self.resolution))
                check_image_size(image.size, shown)
                return image.convert("RGB")
        except D3DatasetError:
            raise
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError,
                MemoryError) as error:
            raise D3DatasetError(f"{shown}: not a readable image ({type(error).__name__}: "
                                 f"{safe_text(str(error).splitlines()[0] if str(error) else '', 200)}); "
                                 "remove or replace it") from None


def _open_no_block(path: str, flags: int) -> int:
    """``os.open`` that does not wait on a FIFO with no writer (its type is then refused after opening)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def check_image_size(size: tuple[int, int], shown: str) -> None:
    """Refuse an image of ``size`` (width, height) in pixels that is empty, over MAX_IMAGE_PIXELS, or whose
    sides are more than MAX_ASPECT_RATIO times apart. Raises: D3DatasetError naming ``shown``."""
    width, height = size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        raise D3DatasetError(f"{shown}: {width} × {height} pixels; an image may have 1 to {MAX_IMAGE_PIXELS:,} "
                             "pixels: shrink or remove it")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise D3DatasetError(f"{shown}: {width} × {height} pixels, sides more than {MAX_ASPECT_RATIO} times apart "
                             "(it would be resized to a strip); crop or remove it")


class ImageTree:
    """torchvision's ImageFolder, walked safely: class folders are the root's sub-folders that are real
    folders (a link to a folder is refused: it could point anywhere, ``/`` included), and within each,
    images are found without following directory links (a link to ``.`` cannot loop), at most
    MAX_FOLDER_DEPTH levels deep and MAX_FOLDER_ENTRIES entries in all; only regular files (or links to
    them) with an image extension count, so a FIFO named ``000.png`` is skipped, never opened.

    Raises: D3DatasetError naming the fix."""

    @staticmethod
    def find_classes(directory: str) -> tuple[list[str], dict[str, int]]:
        classes = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        classes.append(entry.name)
                    elif entry.is_symlink() and entry.is_dir():
                        raise D3DatasetError(f"{safe_text(entry.path, 300)}: a class folder that is a link; d3codec "
                                             "does not follow links to folders: put the folder itself there")
                    if len(classes) > MAX_FOLDER_CLASSES:
                        raise D3DatasetError(f"{safe_text(directory, 300)}: more than {MAX_FOLDER_CLASSES:,} class "
                                             "folders, more than an archive can hold")
        except D3DatasetError:
            raise
        except OSError as error:
            raise D3DatasetError(f"{safe_text(directory, 300)}: cannot list it ({error.strerror})") from None
        if not classes:
            raise D3DatasetError(f"{safe_text(directory, 300)}: no class folders; give a folder with one sub-folder "
                                 "of images per class")
        classes.sort()
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        import stat

        from torchvision.datasets.folder import IMG_EXTENSIONS

        samples, seen = [], 0
        for name, index in sorted(class_to_idx.items()):
            top = os.path.join(directory, name)
            base_depth = top.rstrip(os.sep).count(os.sep)
            for root, dirs, files in os.walk(top, followlinks=False):
                seen += len(dirs) + len(files)
                if seen > MAX_FOLDER_ENTRIES:
                    raise D3DatasetError(f"{safe_text(directory, 300)}: more than {MAX_FOLDER_ENTRIES:,} files and "
                                         "folders; give a smaller tree")
                if root.count(os.sep) - base_depth >= MAX_FOLDER_DEPTH:
                    dirs.clear()
                dirs.sort()
                for file in sorted(files):
                    path = os.path.join(root, file)
                    if not file.lower().endswith(IMG_EXTENSIONS):
                        continue
                    try:
                        regular = stat.S_ISREG(os.stat(path).st_mode)
                    except OSError:  # a dangling link
                        regular = False
                    if regular:
                        samples.append((path, index))
        return samples


_SAFE_TREES: dict[str, type] = {}


def safe_tree_class(base: str) -> type:
    """torchvision's dataset class ``base`` ("ImageFolder" or "ImageNet") walked as :class:`ImageTree` walks:
    made once, on first use (torchvision's datasets are not imported before), as this module's ``Safe<base>``,
    which pickle finds by name (module ``__getattr__``): DataLoader workers started by spawn, as in a rank of
    ``d3 compress --workers N``, receive the dataset pickled."""
    if base not in _SAFE_TREES:
        import torchvision.datasets

        _SAFE_TREES[base] = type(f"Safe{base}", (ImageTree, getattr(torchvision.datasets, base)),
                                 {"__module__": __name__, "__doc__": f"torchvision's {base} walked as ImageTree walks."})
    return _SAFE_TREES[base]


def __getattr__(name: str):
    if name in ("SafeImageFolder", "SafeImageNet"):  # unpickling a dataset in a worker
        return safe_tree_class(name.removeprefix("Safe"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_load_workers() -> int:
    """DataLoader processes for a dataset on disk: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


def _image_folder(path: Path, name: str, resolution: int, normalisation, test_path: Path | None = None,
                  load_workers: int | None = None) -> RealData:
    SafeImageFolder = safe_tree_class("ImageFolder")
    loader = DraftLoader(resolution)
    try:
        train = SafeImageFolder(str(path), transform=_folder_transform(resolution), loader=loader)
        test = None
        if test_path is not None and test_path.is_dir():
            test = SafeImageFolder(str(test_path), transform=_folder_transform(resolution), loader=loader)
    except D3DatasetError:
        raise
    except (FileNotFoundError, RuntimeError, OSError) as e:
        raise D3DatasetError(f"{safe_text(str(path), 300)}: not a usable class-per-folder image tree "
                             f"({safe_text(str(e), 300)}). Fix: give a folder with one sub-folder of images per "
                             "class") from None
    if not train.samples:
        raise D3DatasetError(f"{safe_text(str(path), 300)}: no image files (regular files named *.png, *.jpg, "
                             "...) in its class folders")
    first = read_one(train)
    channels = first.shape[0]
    mean, std = normalisation
    if len(mean) != channels:
        mean, std = (0.5,) * channels, (0.5,) * channels
    return RealData(name, list(train.classes), (channels, resolution, resolution), tuple(mean), tuple(std),
                    torch.as_tensor(train.targets, dtype=torch.int64), train, test,
                    load_workers=default_load_workers() if load_workers is None else load_workers)


def read_one(dataset: Dataset, index: int = 0) -> torch.Tensor:
    """Image ``index`` of a folder dataset (C, H, W) float32. Raises: D3DatasetError in one line, naming
    the file, when it cannot be decoded or transformed."""
    image, error = _Guarded(dataset)[index]
    if error is not None:
        raise D3DatasetError(error)
    return image


class _Guarded(Dataset):
    """A dataset whose items are (image, None), or (None, the one-line reason) where reading the item
    failed: a DataLoader worker hands the reason back instead of a traceback."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i][0], None
        except D3DatasetError as error:
            return None, str(error)
        except Exception as error:  # a transform's refusal of an odd image: still one line, naming the item
            where = getattr(self.dataset, "samples", None)
            shown = safe_text(where[i][0], 300) if where is not None and 0 <= i < len(where) else f"item {i}"
            return None, (f"{shown}: cannot be read ({type(error).__name__}: "
                          f"{safe_text(str(error).splitlines()[0] if str(error) else '', 200)})")


def _imagenet(root: Path, resolution: int, load_workers: int | None = None) -> RealData:
    SafeImageNet = safe_tree_class("ImageNet")
    candidates = [root / "imagenet", root]
    for base in candidates:
        if (base / "meta.bin").is_file() and (base / "train").is_dir():
            loader = DraftLoader(resolution)
            train = SafeImageNet(str(base), split="train", transform=_folder_transform(resolution), loader=loader)
            val = SafeImageNet(str(base), split="val", transform=_folder_transform(resolution), loader=loader) \
                if (base / "val").is_dir() else None
            classes = [names[0] for names in train.classes]
            return RealData("imagenet", classes, (3, resolution, resolution), *NORMALISATION["imagenet"],
                            torch.as_tensor(train.targets, dtype=torch.int64), train, val,
                            load_workers=default_load_workers() if load_workers is None else load_workers)
        if (base / "train").is_dir():
            return _image_folder(base / "train", "imagenet", resolution, NORMALISATION["imagenet"], base / "val",
                                 load_workers)
    raise D3DatasetError(f"ImageNet not found: looked for train/ (torchvision ImageNet layout with meta.bin, or "
                         f"ImageFolder layout) in {', '.join(map(str, candidates))}. Fix: pass --data-root DIR where "
                         "DIR/train/<class>/*.JPEG exists")
