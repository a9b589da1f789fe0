"""``D3Dataset``: an archive as a torch Dataset for student training."""

from __future__ import annotations

import os
from typing import Callable

from torch.utils.data import Dataset

from .archive import open_archive
from .labeller import read_labeller
from .registry import archive_kind
from .errors import D3FormatError, D3LimitError
from .limits import DEFAULT_LIMITS, DecodeLimits, check
from .text import safe_text


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
            to draw per class (default: d3 one per prior, d2m the archive's own default, either at
            most d3codec.limits.default_draw_cap: 64 per float32 image a class the file's bytes would
            hold); refused for archives of stored images.
        seed: for sampled archives: the same seed (0 ≤ seed < 2^64) draws the same images.
        device: where sampled archives are decoded ("cpu", "cuda", ...); images end on the CPU.
        limits: the decode budget (d3codec.limits.DecodeLimits; default its defaults, sized for every
            archive d3codec writes up to ImageNet-1K scale): an archive, or a ``samples_per_class``,
            whose expansion would cost more is refused before anything is allocated.
        max_bytes: shorthand for ``limits`` with ``max_bytes`` raised (or lowered): the bytes the decoded
            images, labels and soft labels may take.
    Attributes:
        classes (list[str]), class_to_idx (dict[str, int]), mean / std (tuples, the archive's
        normalisation), image_shape ((C, H, W)), meta (dict, the archive's metadata),
        images ((N, C, H, W) float32), labels ((N,) int64), targets (the same hard labels, as torchvision's
        datasets name them), soft_labels ((N, K) float32 probabilities, or None), labeller (None, or the
        archive's stored labeller, d3codec.labeller.Labeller: a torch.nn.Module in eval mode that takes
        images (N, C, H, W) float32 on this dataset's scale, on ``device``, and returns soft labels (N, K)
        float32 probabilities at the stored temperature; a student may relabel every augmented batch
        with it), schedule (a
        d3codec.schedule.TrainingSchedule for archives distilled for one: pixel objective bptt; else
        None): train on those images by ``ds.schedule.replay(ds.images, ds.labels, ...)``.
    Raises: D3FormatError for a malformed archive, D3LimitError (a D3FormatError) for one over
        ``limits``; ValueError for a bad ``targets``, a ``samples_per_class`` that is not a positive
        integer, or one given for an archive of stored images; ValueError for an unusable ``device``.
    """

    def __init__(self, path: str | os.PathLike | bytes, transform: Callable | None = None,
                 target_transform: Callable | None = None, targets: str = "auto",
                 samples_per_class: int | None = None, seed: int = 0, device: str = "cpu",
                 limits: DecodeLimits | None = None, max_bytes: int | None = None):
        from .models import resolve_device

        if targets not in ("auto", "hard", "soft"):
            raise ValueError(f"targets must be 'auto', 'hard' or 'soft', not {targets!r}")
        limits = (limits or DEFAULT_LIMITS).with_overrides(max_bytes=max_bytes)
        device = resolve_device(str(device))
        reader, meta = open_archive(path, limits)
        with reader:
            self.images, self.labels, soft, self.schedule, self._draw = decode_archive(
                reader, meta, samples_per_class, seed, device, limits)
            self.labeller = read_labeller(reader, meta, device, limits)
            kind = archive_kind(meta["method"])
            if self.labeller is None and kind.read_labeller is not None:  # the kind's own (D2M's teacher)
                self.labeller = kind.read_labeller(reader, meta, device, limits)
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
        self._made = (samples_per_class, seed)

    @property
    def targets(self):
        """The hard labels (N,) int64, class indices into ``classes`` (torchvision's name for them);
        ``__getitem__`` gives the soft label instead where ``soft_labels`` is set."""
        return self.labels

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
        per_class, seed = self._made
        k = len(self.classes)
        made = (f"drawn: {per_class or len(self) // max(k, 1)} per class, seed {seed}" if self.sampled
                else "stored in the archive")
        targets = "soft labels (K probabilities each)" if self.soft_labels is not None else "hard labels"
        extra = ", with a training schedule (ds.schedule.replay)" if self.schedule is not None else ""
        extra += ", with a stored labeller for online soft labels (ds.labeller)" if self.labeller is not None else ""
        return (f"D3Dataset(method={safe_text(repr(self.meta['method']), 60)}, "
                f"dataset={safe_text(repr(self.meta['dataset']['name']), 80)}, "
                f"images={len(self)} ({made}), classes={k}, shape={self.image_shape}, targets: {targets}{extra})")


def decode_archive(reader, meta: dict, samples_per_class: int | None, seed: int, device, limits: DecodeLimits,
                   check_default: bool = False):
    """Decode an open archive within ``limits``: (images, labels, soft labels or None, schedule or None,
    sampler or None). ``check_default`` also refuses a sampled archive whose *default* expansion is over
    the limits, whatever ``samples_per_class`` asks (what ``d3 verify`` checks).

    Raises: as :class:`D3Dataset`; D3LimitError where an allocation fails within the limits (a machine with
    less memory than they allow).
    """
    try:
        return _decode(reader, meta, samples_per_class, seed, device, limits, check_default)
    except MemoryError:  # within the limits, yet more than this machine could give
        raise D3LimitError("decoding this archive ran out of memory within the decode limits; draw fewer images "
                           "(--samples-per-class) or lower --max-bytes") from None
    except RuntimeError as error:
        if "alloc" not in str(error) and "out of memory" not in str(error):
            raise
        raise D3LimitError(f"decoding this archive ran out of memory within the decode limits "
                           f"({safe_text(str(error).splitlines()[0], 160)}); draw fewer images (--samples-per-class) "
                           "or lower --max-bytes") from None


def _decode(reader, meta: dict, samples_per_class: int | None, seed: int, device, limits: DecodeLimits,
            check_default: bool):
    from .registry import archive_kind, archive_kind_names
    from .schedule import step_batches

    kind = archive_kind(meta["method"])  # known: open_archive checked it
    sampler = None
    if kind.sampled:
        sampler = kind.load_sampler(reader, meta, device, limits)
        if check_default:
            sampler.check(None)
        images, labels, soft = sampler(samples_per_class, seed)
    elif samples_per_class is not None:
        sampled = [name for name in archive_kind_names() if archive_kind(name).sampled]
        raise ValueError(f"a number of samples per class applies to sampled archives ({', '.join(sampled)}) only; "
                         f"this {meta['method']} archive stores its images")
    else:
        images, labels, soft = kind.decode(reader, meta, limits)
    schedule = kind.read_schedule(reader, meta, limits) if kind.read_schedule else None
    if schedule is not None:
        try:
            step_batches(labels, schedule.steps, len(meta["dataset"]["classes"]))
        except ValueError as error:
            raise D3FormatError(f"the images do not split into the schedule's steps: {error}") from None
        check("multiply-adds", schedule.replay_macs(len(labels)), limits, "max_replay_macs",
              f"replaying its {schedule.steps}×{schedule.epochs}-step {schedule.network} schedule")
    return images, labels, soft, schedule, sampler
