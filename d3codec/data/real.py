"""Real data in memory or on disk: :class:`RealData` (a labelled training set, its test split and
normalisation), per-class sampling with a bounded cache (:class:`ClassSampler`), and parallel reads of a
dataset on disk (``load_workers`` DataLoader processes, images as uint8)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sized, cast

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from d3codec.errors import D3DatasetError
from d3codec.format.text import safe_text

REAL_CACHE_BYTES = 2 << 30  # decoded real images a ClassSampler keeps of a dataset on disk, at most


PARALLEL_READ_MIN = 64  # reads of fewer images stay in this process


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
            raise D3DatasetError(
                f"dataset {self.name!r} has classes without images: {', '.join(empty[:10])}; "
                "remove their folders or add images"
            )

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

    def in_memory(
        self, classes: list[int], per_class: int, generator: torch.Generator, max_bytes: int = REAL_CACHE_BYTES
    ) -> "RealData":
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
            picks.append(idx[torch.randperm(len(idx), generator=generator)[: min(per_class, fits, len(idx))]])
        chosen = torch.cat(picks)
        images, targets = self.read_uint8(chosen), self.train_targets[chosen]
        return RealData(
            self.name,
            self.classes,
            self.image_shape,
            self.mean,
            self.std,
            targets,
            TensorImages(images, targets),
            self.test,
            images,
            self.load_workers,
            partial=True,
        )

    def read_uint8(self, indices: torch.Tensor) -> torch.Tensor:
        """Training images at ``indices`` as (n, C, H, W) uint8 (rounded from [0, 1]); a dataset on disk is
        decoded by ``load_workers`` processes in parallel when there are many."""
        if self.train_images is not None:
            return self.train_images[indices]
        out = torch.empty(len(indices), *self.image_shape, dtype=torch.uint8)
        guarded = _Guarded(self.train)
        batches: Iterable[torch.Tensor | str]
        if len(indices) < PARALLEL_READ_MIN or self.load_workers < 1:
            batches = (_to_uint8([guarded[i]]) for i in indices.tolist())
        else:  # in order: batch b holds images 32·b …
            batches = DataLoader(
                Subset(guarded, indices.tolist()), batch_size=32, num_workers=self.load_workers, collate_fn=_to_uint8
            )
        at = 0
        for batch in batches:
            if isinstance(batch, str):  # a file that could not be read, named in one line
                raise D3DatasetError(batch)
            out[at : at + len(batch)] = batch
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

    mean: torch.Tensor  # (1, C, 1, 1) float32 buffer
    std: torch.Tensor  # (1, C, 1, 1) float32 buffer

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
    images: list[torch.Tensor] = []
    for image, error in batch:
        if error is not None:
            return error
        assert image is not None  # _Guarded: an item without a reason holds its image
        images.append(image)
    return (torch.stack(images) * 255).round().to(torch.uint8)


class ClassSampler:
    """Draws random training images of some classes (local index i → dataset class ``classes[i]``).

    In-memory datasets are sampled directly. For datasets on disk (ImageNet, folders), reading
    images every iteration would dominate, so up to ``cache_per_class`` random images of each
    class are read once (RealData.in_memory: in parallel, at most ``max_bytes``) and the real side
    samples from that subset, ``self.real``, which the method's other stages (teacher, warm start)
    can use as well.
    """

    def __init__(
        self,
        real: RealData,
        classes: list[int],
        cache_per_class: int,
        generator: torch.Generator,
        max_bytes: int = REAL_CACHE_BYTES,
    ):
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
        return len(cast(Sized, self.dataset))  # map-style datasets (folders, TensorImages) have a length

    def __getitem__(self, i: int):
        try:
            return self.dataset[i][0], None
        except D3DatasetError as error:
            return None, str(error)
        except Exception as error:  # a transform's refusal of an odd image: still one line, naming the item
            where = getattr(self.dataset, "samples", None)
            shown = safe_text(where[i][0], 300) if where is not None and 0 <= i < len(where) else f"item {i}"
            return None, (
                f"{shown}: cannot be read ({type(error).__name__}: "
                f"{safe_text(str(error).splitlines()[0] if str(error) else '', 200)})"
            )
