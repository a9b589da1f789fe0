"""``D3Dataset``: an archive as a torch Dataset for student training."""

from __future__ import annotations

import os
from typing import Callable

from torch.utils.data import Dataset

from .archive import open_archive
from .errors import D3FormatError


class D3Dataset(Dataset):
    """The synthetic images of a ``.d3`` archive, in the manner of torchvision's datasets.

    Images come in pixel space on the scale of torchvision's ``ToTensor`` (0 to 1; distilled
    values may stray slightly outside), so normalise them in ``transform`` as for real data:
    ``transforms.Normalize(ds.mean, ds.std)``.

    Args:
        path: the archive (a path, or its bytes).
        transform: applied to each image (C, H, W) float32.
        target_transform: applied to each target.
        targets: "auto" (soft labels where the archive has them, else hard), "hard" or "soft".
            Soft targets are (K,) float32 probabilities; hard targets are int class indices.
        samples_per_class: for archives that are sampled (methods d3 and d2m): how many images
            to draw per class (default: d3 one per prior, d2m the archive's own default); refused
            for archives of stored images.
        seed: for sampled archives: the same seed draws the same images.
        device: where sampled archives are decoded ("cpu", "cuda", ...); images end on the CPU.
    Attributes:
        classes (list[str]), class_to_idx (dict[str, int]), mean / std (tuples, the archive's
        normalisation), image_shape ((C, H, W)), meta (dict, the archive's metadata),
        images ((N, C, H, W) float32), labels ((N,) int64), schedule (a
        d3codec.schedule.TrainingSchedule for archives distilled for one: pixel objective bptt; else
        None): train on those images by ``ds.schedule.replay(ds.images, ds.labels, ...)``.
    Raises: D3FormatError for a malformed archive; ValueError for a bad ``targets`` or sampling
        options given for an archive of stored images.
    """

    def __init__(self, path: str | os.PathLike | bytes, transform: Callable | None = None,
                 target_transform: Callable | None = None, targets: str = "auto",
                 samples_per_class: int | None = None, seed: int = 0, device: str = "cpu"):
        from .methods import DECODERS, SAMPLERS, SCHEDULES
        from .schedule import step_batches

        if targets not in ("auto", "hard", "soft"):
            raise ValueError(f"targets must be 'auto', 'hard' or 'soft', not {targets!r}")
        reader, meta = open_archive(path)
        self._draw = None
        with reader:
            if meta["method"] in SAMPLERS:
                self._draw = SAMPLERS[meta["method"]](reader, meta, device)
                self.images, self.labels, soft = self._draw(samples_per_class, seed)
            elif samples_per_class is not None:
                raise ValueError(f"samples_per_class applies to sampled archives ({', '.join(sorted(SAMPLERS))}); "
                                 f"this {meta['method']} archive stores its images")
            else:
                self.images, self.labels, soft = DECODERS[meta["method"]](reader, meta)
            read_schedule = SCHEDULES.get(meta["method"])
            self.schedule = read_schedule(reader, meta) if read_schedule else None
        if self.schedule is not None:
            try:
                step_batches(self.labels, self.schedule.steps, len(meta["dataset"]["classes"]))
            except ValueError as error:
                raise D3FormatError(f"the images do not split into the schedule's steps: {error}") from None
        if targets == "hard":
            soft = None
        if targets == "soft" and soft is None:
            raise ValueError("this archive has no soft labels; use targets='hard' or 'auto'")
        self.soft_labels = soft
        self.meta = meta
        ds = meta["dataset"]
        self.classes: list[str] = list(ds["classes"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.image_shape = tuple(ds["image_shape"])
        self.mean, self.std = tuple(ds["mean"]), tuple(ds["std"])
        self.transform, self.target_transform = transform, target_transform

    @property
    def sampled(self) -> bool:
        """Whether the archive generates its images (d3, d2m), so :meth:`draw` can give fresh ones."""
        return self._draw is not None

    def draw(self, samples_per_class: int | None = None, seed: int = 0):
        """Fresh samples from a sampled archive, without touching this dataset's own images.

        Returns: images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K)
        float32 or None. Raises: ValueError for an archive of stored images.
        """
        if self._draw is None:
            raise ValueError(f"this {self.meta['method']} archive stores its images; only sampled archives draw")
        return self._draw(samples_per_class, seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]  # (C, H, W) float32
        target = self.soft_labels[index] if self.soft_labels is not None else int(self.labels[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __repr__(self) -> str:
        return (f"D3Dataset(method={self.meta['method']!r}, dataset={self.meta['dataset']['name']!r}, "
                f"images={len(self)}, classes={len(self.classes)}, shape={self.image_shape})")
