"""The sampler interface: an archive that generates its images (d3, d2m), loaded and ready to draw.

Each sampled method's archive module implements it (d3codec.methods.d3.archive, d3codec.methods.d2m.archive);
d3codec.decode.dataset reads any of them through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

MAX_DRAW_INDEX = 1 << 62  # images a draw may hold: its indices and their sums stay within int64


class Sampler(ABC):
    """An archive that generates its images (d3, d2m), loaded and ready to draw any number per class.

    Loading has already checked the networks against the decode limits (parameters, multiply-adds
    per image; d3codec.format.limits); :meth:`draw` checks what a draw would hold (``max_bytes``) before
    allocating it. ``sampler(samples_per_class, seed)`` is ``sampler.draw(...)``.

    A draw of ``samples_per_class`` is a sequence of images, class by class (the counts of
    :meth:`class_counts`), sample j = 0, 1, … within a class. In a format 1.1 archive image i is a pure
    function of (archive, samples_per_class, seed, i) (spec/FORMAT.md §5.4), so :meth:`decode_at` makes any
    few of them on their own: what a lazy dataset reads (d3codec.D3Dataset); a whole draw is made the same
    way, batch by batch, into tensors allocated once. A 1.0 archive draws whole (:meth:`_draw_v10`).

    Attributes: ``num_classes``, ``image_shape`` (C, H, W), ``soft`` (whether draws carry soft
    labels), ``limits`` (d3codec.format.limits.DecodeLimits), ``version`` ((major, minor) of the archive:
    its minor version decides the sampling noise, spec/FORMAT.md §5.4), ``draw_cap`` (a default draw,
    ``samples_per_class=None``, takes at most this many images a class, whatever the archive declares),
    ``batch`` (images decoded at once within ``limits.working_bytes``).
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    soft: bool
    limits: Any
    version: tuple[int, int]
    draw_cap: int  # the most images per class of a default draw (d3codec.format.limits.default_draw_cap)
    batch: int

    @abstractmethod
    def class_counts(self, samples_per_class: int | None) -> list[int]:
        """Images of each class, in class order, that a draw of ``samples_per_class`` (None: the archive's
        default) makes."""

    @abstractmethod
    def counts(self, samples_per_class: int | None) -> tuple[int, int]:
        """(images, noise values held at once) that a whole draw of ``samples_per_class`` makes."""

    @abstractmethod
    def macs(self, samples_per_class: int | None) -> int:
        """Multiply-adds of a draw of ``samples_per_class`` (decoding and labelling every image), counted
        with d3codec.format.limits.draw_macs (sampling noise included, at least MIN_MACS_PER_IMAGE an image)."""

    @abstractmethod
    def _decode_at(
        self, samples_per_class: int | None, seed: int, classes: torch.Tensor, samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample ``samples[i]`` of class ``classes[i]`` (both (B,) int64) of a 1.1 draw: images (B, C, H, W)
        float32, soft labels (B, K) float32 or None."""

    @abstractmethod
    def _draw_v10(self, samples_per_class: int | None, seed: int):
        """A whole draw of a format 1.0 archive, after :meth:`check`."""

    def check_count(self, samples_per_class: int | None) -> None:
        """Raises: ValueError for a ``samples_per_class`` that is neither None nor a positive integer."""
        if samples_per_class is not None and (type(samples_per_class) is not int or samples_per_class < 1):
            raise ValueError(f"samples_per_class must be a positive integer, not {samples_per_class!r}")
        if samples_per_class is not None and samples_per_class > MAX_DRAW_INDEX // max(1, self.num_classes):
            raise ValueError(f"samples_per_class {samples_per_class} is past what an image index can count")

    def check(self, samples_per_class: int | None) -> None:
        """Refuse a whole draw before any work: ValueError for a count that is not a positive integer,
        D3LimitError for one whose output would pass ``limits.max_bytes`` or whose multiply-adds would
        pass ``limits.max_macs``."""
        from d3codec.format.limits import check, output_bytes

        self.check_count(samples_per_class)
        images, noise = self.counts(samples_per_class)
        check(
            "bytes",
            output_bytes(images, self.image_shape, self.num_classes, self.soft, noise),
            self.limits,
            "max_bytes",
            f"drawing {images:,} images of shape {self.image_shape}" + (" with soft labels" if self.soft else ""),
        )
        check("multiply-adds", self.macs(samples_per_class), self.limits, "max_macs", f"decoding {images:,} images")

    def labels(self, samples_per_class: int | None = None) -> torch.Tensor:
        """The hard labels (N,) int64 of a draw, made without decoding anything."""
        counts = self.class_counts(samples_per_class)
        return torch.arange(self.num_classes).repeat_interleave(torch.tensor(counts, dtype=torch.long))

    def decode_at(self, samples_per_class: int | None, seed: int, index: torch.Tensor):
        """Images ``index`` ((B,) int64, each in [0, N)) of the draw of ``samples_per_class`` with ``seed``:
        images (B, C, H, W) float32 in [0, 1], labels (B,) int64, soft labels (B, K) float32 or None: those
        rows of :meth:`draw` (to within float32 rounding: a decoder's arithmetic may depend on its batch).
        Format 1.1 archives only.
        Raises: ValueError for a 1.0 archive, a bad count or seed; IndexError for an index out of range;
        D3FormatError when the stored values decode to non-finite images."""
        from d3codec.format.noise import check_seed

        if self.version < (1, 1):
            raise ValueError("a format 1.0 archive draws its images whole, not one by one (d3 rewrite it as 1.1)")
        self.check_count(samples_per_class)
        counts = torch.tensor(self.class_counts(samples_per_class), dtype=torch.long)
        ends = counts.cumsum(0)
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= int(ends[-1])):
            raise IndexError(f"image index out of range: the draw holds {int(ends[-1])} images")
        classes = torch.searchsorted(ends, index, right=True)
        images, soft = self._decode_at(samples_per_class, check_seed(seed), classes, index - (ends - counts)[classes])
        return self.checked(images, soft, classes)

    def checked(self, images: torch.Tensor, soft: torch.Tensor | None, labels: torch.Tensor):
        """(images (B, C, H, W) float32, labels (B,) int64, soft (B, K) float32 or None), once images and soft
        labels are finite. Raises: D3FormatError where they are not."""
        from d3codec.errors import D3FormatError
        from d3codec.format.limits import all_finite

        if not all_finite(images):
            raise D3FormatError("the archive decodes to non-finite images (its stored values are corrupt)")
        if soft is not None and not all_finite(soft):  # a stored teacher whose logits overflow
            raise D3FormatError("the archive's soft labels of its samples are not finite (its teacher overflows)")
        return images, labels, soft

    def draw(self, samples_per_class: int | None = None, seed: int = 0):
        """Images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K) float32 or
        None; the same seed (0 ≤ seed < 2^64) gives the same images. Raises: as :meth:`check`, and
        D3FormatError when the stored values decode to non-finite images."""
        from d3codec.format.noise import check_seed

        self.check(samples_per_class)
        seed = check_seed(seed)
        if self.version < (1, 1):
            images, labels, soft = self._draw_v10(samples_per_class, seed)
            return self.checked(images, soft, labels)
        labels = self.labels(samples_per_class)
        images = torch.empty(len(labels), *self.image_shape)  # filled in place: no second copy at the end
        soft = torch.empty(len(labels), self.num_classes) if self.soft else None
        for lo in range(0, len(labels), self.batch):
            part, _, part_soft = self.decode_at(
                samples_per_class, seed, torch.arange(lo, min(lo + self.batch, len(labels)))
            )
            images[lo : lo + len(part)] = part
            if soft is not None:
                soft[lo : lo + len(part)] = part_soft
        return images, labels, soft

    __call__ = draw
