"""Class-per-folder image trees (ImageNet, any ImageFolder layout) read safely: walked without following
directory links (:class:`ImageTree`), every file checked before it is decoded (:class:`DraftLoader`: size,
pixels, aspect), JPEGs decoded at a reduced scale where the resolution allows (PIL's ``draft``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from d3codec.data.real import RealData, read_one
from d3codec.errors import D3DatasetError
from d3codec.format.text import safe_text

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
                    raise D3DatasetError(
                        f"{shown}: {info.st_size:,} bytes, over the {MAX_IMAGE_FILE_BYTES:,} an "
                        "image file may take; shrink or remove it"
                    )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    image = Image.open(f)
                if image.format == "JPEG":
                    image.draft("RGB", (self.resolution, self.resolution))
                check_image_size(image.size, shown)
                return image.convert("RGB")
        except D3DatasetError:
            raise
        except (
            OSError,
            ValueError,
            SyntaxError,
            UnidentifiedImageError,
            Image.DecompressionBombError,
            MemoryError,
        ) as error:
            raise D3DatasetError(
                f"{shown}: not a readable image ({type(error).__name__}: "
                f"{safe_text(str(error).splitlines()[0] if str(error) else '', 200)}); "
                "remove or replace it"
            ) from None


def _open_no_block(path: str, flags: int) -> int:
    """``os.open`` that does not wait on a FIFO with no writer (its type is then refused after opening)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def check_image_size(size: tuple[int, int], shown: str) -> None:
    """Refuse an image of ``size`` (width, height) in pixels that is empty, over MAX_IMAGE_PIXELS, or whose
    sides are more than MAX_ASPECT_RATIO times apart. Raises: D3DatasetError naming ``shown``."""
    width, height = size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        raise D3DatasetError(
            f"{shown}: {width} × {height} pixels; an image may have 1 to {MAX_IMAGE_PIXELS:,} "
            "pixels: shrink or remove it"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise D3DatasetError(
            f"{shown}: {width} × {height} pixels, sides more than {MAX_ASPECT_RATIO} times apart "
            "(it would be resized to a strip); crop or remove it"
        )


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
                        raise D3DatasetError(
                            f"{safe_text(entry.path, 300)}: a class folder that is a link; d3codec "
                            "does not follow links to folders: put the folder itself there"
                        )
                    if len(classes) > MAX_FOLDER_CLASSES:
                        raise D3DatasetError(
                            f"{safe_text(directory, 300)}: more than {MAX_FOLDER_CLASSES:,} class "
                            "folders, more than an archive can hold"
                        )
        except D3DatasetError:
            raise
        except OSError as error:
            raise D3DatasetError(f"{safe_text(directory, 300)}: cannot list it ({error.strerror})") from None
        if not classes:
            raise D3DatasetError(
                f"{safe_text(directory, 300)}: no class folders; give a folder with one sub-folder of images per class"
            )
        classes.sort()
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(
        directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None, allow_empty: bool = False
    ) -> list[tuple[str, int]]:
        import stat

        from torchvision.datasets.folder import IMG_EXTENSIONS

        samples, seen = [], 0
        for name, index in sorted(class_to_idx.items()):
            top = os.path.join(directory, name)
            base_depth = top.rstrip(os.sep).count(os.sep)
            for root, dirs, files in os.walk(top, followlinks=False):
                seen += len(dirs) + len(files)
                if seen > MAX_FOLDER_ENTRIES:
                    raise D3DatasetError(
                        f"{safe_text(directory, 300)}: more than {MAX_FOLDER_ENTRIES:,} files and "
                        "folders; give a smaller tree"
                    )
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

        _SAFE_TREES[base] = type(
            f"Safe{base}",
            (ImageTree, getattr(torchvision.datasets, base)),
            {"__module__": __name__, "__doc__": f"torchvision's {base} walked as ImageTree walks."},
        )
    return _SAFE_TREES[base]


def __getattr__(name: str):
    if name in ("SafeImageFolder", "SafeImageNet"):  # unpickling a dataset in a worker
        return safe_tree_class(name.removeprefix("Safe"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_load_workers() -> int:
    """DataLoader processes for a dataset on disk: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


def _image_folder(
    path: Path,
    name: str,
    resolution: int,
    normalisation,
    test_path: Path | None = None,
    load_workers: int | None = None,
) -> RealData:
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
        raise D3DatasetError(
            f"{safe_text(str(path), 300)}: not a usable class-per-folder image tree "
            f"({safe_text(str(e), 300)}). Fix: give a folder with one sub-folder of images per "
            "class"
        ) from None
    if not train.samples:
        raise D3DatasetError(
            f"{safe_text(str(path), 300)}: no image files (regular files named *.png, *.jpg, ...) in its class folders"
        )
    first = read_one(train)
    channels = first.shape[0]
    mean, std = normalisation
    if len(mean) != channels:
        mean, std = (0.5,) * channels, (0.5,) * channels
    return RealData(
        name,
        list(train.classes),
        (channels, resolution, resolution),
        tuple(mean),
        tuple(std),
        torch.as_tensor(train.targets, dtype=torch.int64),
        train,
        test,
        load_workers=default_load_workers() if load_workers is None else load_workers,
    )
