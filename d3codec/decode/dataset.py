"""``D3Dataset``: an archive as a torch Dataset for student training."""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable

import torch
from torch.utils.data import Dataset

from d3codec.decode.labeller import read_labeller
from d3codec.decode.sampler import Sampler
from d3codec.errors import D3FormatError, D3LimitError
from d3codec.format.limits import DEFAULT_LIMITS, DecodeLimits, check
from d3codec.format.meta import known_kind, open_archive
from d3codec.format.noise import check_seed
from d3codec.format.text import safe_text
from d3codec.registry import archive_kind


class D3Dataset(Dataset):
    """The synthetic images of a ``.d3`` archive, in the manner of torchvision's datasets.

    Images come in pixel space on the scale of torchvision's ``ToTensor`` (0 to 1; distilled
    values may stray slightly outside), so normalise them in ``transform`` as for real data:
    ``transforms.Normalize(ds.mean, ds.std)``.

    Archives that store their images (method pixel) are decoded when opened. Archives that generate
    them (methods d3 and d2m, format 1.1) are **lazy**: opening loads the networks and priors only, and
    image i, a pure function of (archive, seed, i) (spec/FORMAT.md §5.4), is decoded when asked for:
    ``ds[i]`` decodes the small aligned block around i (kept in a cache of a few blocks), and a
    ``DataLoader`` fetches each batch's images in one decode (``__getitems__``). DataLoader workers
    (``num_workers > 0``) each open the archive again and give the same images, to within float32
    rounding (a worker forked from a process that decodes on a GPU decodes on the CPU). :meth:`set_epoch`
    switches to another draw, as ``DistributedSampler.set_epoch`` reshuffles; call it before the epoch's
    iterator is made (``persistent_workers=True`` keeps the workers' copies, and their epoch, unchanged).
    ``ds.images`` (and ``ds.soft_labels`` of a sampled archive) decode the whole draw once and keep it:
    convenient for small draws, bounded by ``limits.max_bytes``.

    Args:
        path: the archive (a path, or its bytes).
        transform: applied to each image (C, H, W) float32.
        target_transform: applied to each target.
        targets: "auto" (soft labels where the archive has them, else hard), "hard" or "soft".
            Soft targets are (K,) float32 probabilities; hard targets are int class indices.
        samples_per_class: for archives that are sampled (methods d3 and d2m): how many images
            to draw per class (default: d3 one per prior, d2m the archive's own default, either at
            most d3codec.format.limits.default_draw_cap: 64 per float32 image a class the file's bytes would
            hold); refused for archives of stored images.
        seed: for sampled archives: the same seed (0 ≤ seed < 2^64) draws the same images.
        device: where sampled archives are decoded ("cpu", "cuda", ...); images end on the CPU.
        limits: the decode budget (d3codec.format.limits.DecodeLimits; default its defaults): an archive, or a
            ``samples_per_class``, whose expansion would cost more is refused before anything is allocated,
            lazy or not (what ``ds.images`` would hold, and the multiply-adds of one pass over the draw).
        max_bytes: shorthand for ``limits`` with ``max_bytes`` raised (or lowered): the bytes the decoded
            images, labels and soft labels may take.
    Attributes:
        classes (list[str]), class_to_idx (dict[str, int]), mean / std (tuples, the archive's
        normalisation), image_shape ((C, H, W)), meta (dict, the archive's metadata),
        images ((N, C, H, W) float32), labels ((N,) int64), targets (the same hard labels, as torchvision's
        datasets name them), soft_labels ((N, K) float32 probabilities, or None), labeller (None, or the
        archive's stored labeller, d3codec.decode.labeller.Labeller: a torch.nn.Module in eval mode that takes
        images (N, C, H, W) float32 on this dataset's scale, on ``device``, and returns soft labels (N, K)
        float32 probabilities at the stored temperature; a student may relabel every augmented batch
        with it), schedule (a d3codec.nn.schedule.TrainingSchedule for archives distilled for one: pixel
        objective bptt; else None): train on those images by ``ds.schedule.replay(ds.images, ds.labels, ...)``,
        lazy (whether images are decoded on demand), epoch (the draw :meth:`set_epoch` chose; 0).
    Raises: D3FormatError for a malformed archive, D3LimitError (a D3FormatError) for one over
        ``limits``; ValueError for a bad ``targets``, a ``samples_per_class`` that is not a positive
        integer, or one given for an archive of stored images; ValueError for an unusable ``device``.
    """

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        targets: str = "auto",
        samples_per_class: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        limits: DecodeLimits | None = None,
        max_bytes: int | None = None,
    ):
        from d3codec.nn.models import resolve_device

        if targets not in ("auto", "hard", "soft"):
            raise ValueError(f"targets must be 'auto', 'hard' or 'soft', not {targets!r}")
        self._source, self._limits = path, (limits or DEFAULT_LIMITS).with_overrides(max_bytes=max_bytes)
        self._device, self._made, self.epoch = resolve_device(str(device)), (samples_per_class, seed), 0
        self._sampler: Sampler | None = None  # lazy: the loaded sampler
        # lazy: decoded blocks (images, labels, soft labels or None) by number
        self._blocks: OrderedDict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._loaded_in: int | None = os.getpid()  # the process whose sampler self._sampler is
        reader, meta = open_archive(path, self._limits)
        with reader:
            kind = known_kind(meta)  # known: open_archive checked it
            self.lazy = kind.sampled and tuple(reader.version) >= (1, 1)
            if self.lazy:
                check_seed(seed)
                assert kind.load_sampler is not None  # a sampled kind's (ArchiveKind.sampled)
                with out_of_memory_as_limit():
                    self._sampler = sampler = kind.load_sampler(reader, meta, self._device, self._limits)
                sampler.check(samples_per_class)  # the whole draw, were it decoded: within the limits
                self._length = sum(sampler.class_counts(samples_per_class))
                self._images, self._labels, soft, self.schedule = None, None, None, None
                has_soft = sampler.soft
            else:
                self._images, self._labels, soft, self.schedule, self._sampler = decode_archive(
                    reader, meta, samples_per_class, seed, self._device, self._limits
                )
                has_soft = soft is not None
            self.labeller = read_labeller(reader, meta, self._device, self._limits)
            if self.labeller is None and kind.read_labeller is not None:  # the kind's own (D2M's teacher)
                self.labeller = kind.read_labeller(reader, meta, self._device, self._limits)
        if targets == "soft" and not has_soft:
            raise ValueError("this archive has no soft labels; use targets='hard' or 'auto'")
        self._soft_targets = has_soft and targets != "hard"
        self._soft = soft if self._soft_targets else None
        self.meta = meta
        ds = meta["dataset"]
        self.classes: list[str] = list(ds["classes"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.image_shape = tuple(ds["image_shape"])
        self.mean, self.std = tuple(ds["mean"]), tuple(ds["std"])
        self.transform, self.target_transform = transform, target_transform

    @property
    def labels(self) -> torch.Tensor:
        """The hard labels (N,) int64, made without decoding any image (within ``max_bytes``, else D3LimitError)."""
        if self._labels is None:
            check("bytes", 8 * self._length, self._limits, "max_bytes", f"the labels of {self._length:,} images")
            self._labels = self.sampler().labels(self._made[0])
        return self._labels

    @property
    def has_soft_labels(self) -> bool:
        """Whether targets are soft labels (known without decoding)."""
        return self._soft_targets

    @property
    def images(self) -> torch.Tensor:
        """All images (N, C, H, W) float32; a lazy dataset decodes its whole draw the first time (within
        ``max_bytes``, else D3LimitError) and keeps it until :meth:`set_epoch`."""
        images = self._images
        if images is None:
            images = self._materialise()
        return images

    @property
    def soft_labels(self) -> torch.Tensor | None:
        """The soft labels (N, K) float32 of every image, or None (hard targets); as :attr:`images`."""
        if self._soft_targets and self._soft is None:
            self._materialise()
        return self._soft

    def _materialise(self) -> torch.Tensor:
        """Decode the whole draw and keep it; returns its images (N, C, H, W) float32."""
        with out_of_memory_as_limit():
            images, _, soft = self.sampler().draw(self._made[0], self._draw_seed())
        self._images, self._soft = images, (soft if self._soft_targets else None)
        return images

    def _draw_seed(self) -> int:
        return (self._made[1] + self.epoch) % (1 << 64)

    def sampler(self):
        """The archive's loaded sampler (d3codec.decode.sampler.Sampler), loaded again where a DataLoader worker
        has no usable copy: after pickling (spawn), or forked from a process that decodes on a GPU (CUDA cannot
        run in a forked child: the worker decodes on the CPU); None for an archive of stored images."""
        forked = self._loaded_in != os.getpid() and self._device.type != "cpu"
        if self.lazy and (self._sampler is None or forked):
            device = self._device if self._loaded_in in (None, os.getpid()) else torch.device("cpu")
            reader, meta = open_archive(self._source, self._limits)
            with reader:
                self._sampler = archive_kind(meta["method"]).load_sampler(reader, meta, device, self._limits)
            self._loaded_in = os.getpid()
        return self._sampler

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s images from now on (seed + epoch): fresh samples every epoch, as
        ``d3 eval --resample-every-epoch`` trains. Epoch 0 is the draw of ``seed``. Raises: ValueError for a
        negative epoch or an archive of stored images."""
        if not self.lazy:
            raise ValueError(f"this {self.meta['method']} archive stores its images; only sampled archives draw anew")
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, not {epoch!r}")
        if epoch != self.epoch:
            self.epoch, self._blocks = epoch, OrderedDict()
            self._images, self._soft = None, None

    def __getstate__(self) -> dict:  # a DataLoader worker's copy opens the archive itself, holding nothing decoded
        state = dict(self.__dict__)
        if self.lazy:
            state.update(_sampler=None, _blocks=OrderedDict(), _images=None, _soft=None, _loaded_in=None)
        return state

    @property
    def targets(self):
        """The hard labels (N,) int64, class indices into ``classes`` (torchvision's name for them);
        ``__getitem__`` gives the soft label instead where ``soft_labels`` is set."""
        return self.labels

    @property
    def sampled(self) -> bool:
        """Whether the archive generates its images (d3, d2m), so :meth:`draw` can give fresh ones."""
        return self.sampler() is not None

    def draw(self, samples_per_class: int | None = None, seed: int = 0):
        """Fresh samples from a sampled archive, without touching this dataset's own images.

        Returns: images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K)
        float32 or None. Raises: ValueError for an archive of stored images.
        """
        if self.sampler() is None:
            raise ValueError(f"this {self.meta['method']} archive stores its images; only sampled archives draw")
        return self.sampler()(samples_per_class, seed)

    def __len__(self) -> int:
        return self._length if self.lazy else len(self.labels)

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images ``index`` ((B,) int64 or a list) without transforms: images (B, C, H, W) float32, labels (B,)
        int64, soft labels (B, K) float32 or None; a lazy dataset decodes just these (as held, where held).
        Raises: IndexError for an index out of range."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if self._images is not None or not self.lazy:
            soft = self.soft_labels
            return self.images[index], self.labels[index], (soft[index] if soft is not None else None)
        with out_of_memory_as_limit():
            images, labels, soft = self.sampler().decode_at(self._made[0], self._draw_seed(), index)
        return images, labels, (soft if self._soft_targets else None)

    def _item(self, image: torch.Tensor, label: torch.Tensor, soft: torch.Tensor | None):
        target = soft if soft is not None else int(label)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __getitem__(self, index: int):
        if self._images is not None or not self.lazy:
            soft = self.soft_labels
            return self._item(self.images[index], self.labels[index], soft[index] if soft is not None else None)
        index = int(index)
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} images")
        number = index // BLOCK
        if number not in self._blocks:
            if len(self._blocks) >= CACHED_BLOCKS:
                self._blocks.popitem(last=False)  # the least recently used
            self._blocks[number] = self.batch(torch.arange(number * BLOCK, min(len(self), (number + 1) * BLOCK)))
        self._blocks.move_to_end(number)
        images, labels, soft = self._blocks[number]
        at = index - number * BLOCK  # copies, not views that would keep the whole block alive
        return self._item(images[at].clone(), labels[at], soft[at].clone() if soft is not None else None)

    def __getitems__(self, indices: list[int]) -> list:
        """The samples of ``indices`` in one decode (what a DataLoader's batch fetch calls)."""
        images, labels, soft = self.batch(indices)
        return [self._item(images[i], labels[i], soft[i] if soft is not None else None) for i in range(len(images))]

    def __repr__(self) -> str:
        per_class, seed = self._made
        k = len(self.classes)
        made = (
            f"drawn: {per_class or len(self) // max(k, 1)} per class, seed {seed}"
            + (f", epoch {self.epoch}" if self.epoch else "")
            + (", decoded on demand" if self.lazy else "")
            if self.lazy or self._sampler is not None
            else "stored in the archive"
        )
        targets = "soft labels (K probabilities each)" if self._soft_targets else "hard labels"
        extra = ", with a training schedule (ds.schedule.replay)" if self.schedule is not None else ""
        extra += ", with a stored labeller for online soft labels (ds.labeller)" if self.labeller is not None else ""
        return (
            f"D3Dataset(method={safe_text(repr(self.meta['method']), 60)}, "
            f"dataset={safe_text(repr(self.meta['dataset']['name']), 80)}, "
            f"images={len(self)} ({made}), classes={k}, shape={self.image_shape}, targets: {targets}{extra})"
        )


BLOCK = 64  # images a lazy dataset decodes around an index it is asked for alone (ds[i])
CACHED_BLOCKS = 8  # blocks it keeps


@contextmanager
def out_of_memory_as_limit():
    """Turn a failed allocation while decoding (within the limits, yet more than this machine could give) into
    D3LimitError naming the fix."""
    try:
        yield
    except MemoryError:
        raise D3LimitError(
            "decoding this archive ran out of memory within the decode limits; draw fewer images "
            "(`samples_per_class`) or lower `max_bytes`"
        ) from None
    except RuntimeError as error:
        if "alloc" not in str(error) and "out of memory" not in str(error):
            raise
        raise D3LimitError(
            f"decoding this archive ran out of memory within the decode limits "
            f"({safe_text(str(error).splitlines()[0], 160)}); draw fewer images (`samples_per_class`) "
            "or lower `max_bytes`"
        ) from None


def decode_archive(
    reader,
    meta: dict,
    samples_per_class: int | None,
    seed: int,
    device,
    limits: DecodeLimits,
    check_default: bool = False,
):
    """Decode an open archive within ``limits``: (images, labels, soft labels or None, schedule or None,
    sampler or None). ``check_default`` also refuses a sampled archive whose *default* expansion is over
    the limits, whatever ``samples_per_class`` asks (what ``d3 verify`` checks).

    Raises: as :class:`D3Dataset`; D3LimitError where an allocation fails within the limits (a machine with
    less memory than they allow).
    """
    with out_of_memory_as_limit():
        return _decode(reader, meta, samples_per_class, seed, device, limits, check_default)


def _decode(
    reader, meta: dict, samples_per_class: int | None, seed: int, device, limits: DecodeLimits, check_default: bool
):
    from d3codec.nn.schedule import step_batches
    from d3codec.registry import archive_kind, archive_kind_names

    kind = known_kind(meta)  # known: open_archive checked it
    sampler = None
    if kind.load_sampler is not None:  # a sampled kind (ArchiveKind.sampled)
        sampler = kind.load_sampler(reader, meta, device, limits)
        if check_default:
            sampler.check(None)
        images, labels, soft = sampler(samples_per_class, seed)
    elif samples_per_class is not None:
        sampled = [name for name in archive_kind_names() if (other := archive_kind(name)) is not None and other.sampled]
        raise ValueError(
            f"a number of samples per class applies to sampled archives ({', '.join(sampled)}) only; "
            f"this {meta['method']} archive stores its images"
        )
    else:
        assert kind.decode is not None  # a kind has exactly one of decode and load_sampler (ArchiveKind)
        images, labels, soft = kind.decode(reader, meta, limits)
    schedule = kind.read_schedule(reader, meta, limits) if kind.read_schedule else None
    if schedule is not None:
        try:
            step_batches(labels, schedule.steps, len(meta["dataset"]["classes"]))
        except ValueError as error:
            raise D3FormatError(f"the images do not split into the schedule's steps: {error}") from None
        check(
            "multiply-adds",
            schedule.replay_macs(len(labels)),
            limits,
            "max_replay_macs",
            f"replaying its {schedule.steps}×{schedule.epochs}-step {schedule.network} schedule",
        )
    return images, labels, soft, schedule, sampler
