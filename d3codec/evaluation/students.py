"""Student evaluation with the field's standard protocol, and the honest real-image baseline.

Protocol (DatasetCondensation / DM / MTT code): a fresh ConvNet-3 per run, SGD lr 0.01,
momentum 0.9, weight decay 5e-4, batch 256, lr × 0.1 at half the epochs, DSA augmentation on
every batch (one transformation per batch, parameters per image), cross-entropy on hard labels
or soft cross-entropy on soft labels. We report the **final-epoch** test accuracy (never the
best epoch), mean ± std over runs, and the students' training seconds.

Baseline ``random-real``: random real training images stored in the same byte budget, either
as float32 (budget / (C·H·W·4) images) or as PNG or JPEG files (images added class by class, round
robin, until their files fill the budget; the student sees what the files decode to).
"""

from __future__ import annotations

import io
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import MultiStepLR

from d3codec.data.real import Normalisation, RealData
from d3codec.encode.checkpoint import weights_digest
from d3codec.encode.loop import LoopState, ResumableLoop
from d3codec.nn.accuracy import synchronize, test_accuracy, test_split
from d3codec.nn.augment import DSA
from d3codec.nn.models import build_model, compiled, worth_compiling
from d3codec.util.progress import progress_bar
from d3codec.util.runtime import keep_freed_memory

CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[CompileMode, ...] = get_args(CompileMode)


@dataclass(frozen=True)
class StudentConfig:
    """Student training options (the standard protocol by default). Units: epochs, images."""

    model: str = "convnet3"
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    compile: CompileMode = "auto"  # torch.compile the student: on, off, or auto (long runs: nn.models.worth_compiling)

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")


# what a row of an evaluation trains on (d3codec.evaluation.protocol): the archive with its own or hard labels,
# random real PNG images with hard labels or labelled by the archive's labeller; None for the other rows
Role = Literal["archive", "archive-hard", "real-png", "real-png-labeller"]


@dataclass
class EvalResult:
    """Final-epoch test accuracies (fractions) of each run and the training seconds of each; ``role``: what the
    row is to DD-Ranking's metrics (d3codec.evaluation.ranking), where it is one of their rows."""

    name: str
    images: int
    accuracies: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    file_bytes: int | None = None
    role: Role | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def summary(self) -> str:
        size = f", {self.file_bytes} bytes" if self.file_bytes is not None else ""
        return (
            f"{self.name}: {100 * self.mean:.2f} ± {100 * self.std:.2f} % final test accuracy over "
            f"{len(self.accuracies)} runs ({self.images} images{size}, {statistics.fmean(self.seconds):.1f} s "
            "training per student)"
        )


# what a student learns from: hard labels (N,) int64, soft labels (N, K) float32, a labeller (a module mapping
# pixel-space images (B, C, H, W) to (B, K) probabilities, asked afresh each batch), or None (a lazy dataset's own)
Targets = torch.Tensor | torch.nn.Module | None


def train_student(
    images,
    targets: Targets,
    num_classes: int,
    mean,
    std,
    test: tuple[torch.Tensor, torch.Tensor],
    config: StudentConfig = StudentConfig(),
    *,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    resample: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: str | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> tuple[float, float]:
    """Train one fresh student and test it. Args:
        images: (N, C, H, W) float32 pixel space, or a dataset with ``batch(index)`` (a lazy d3codec.D3Dataset)
            decoded a batch at a time, with no ``resample`` nor ``checkpoint``.
        targets: see :data:`Targets` (a labeller labels every augmented batch afresh); test: the test split, images
            (M, C, H, W) float32 pixel space and labels (M,) int64.
        resample: ``resample(epoch)`` → fresh (images, targets) of the same kinds every epoch after the first (DiM's
            re-sampling, Wang et al. 2023; its time counts as training). A pure function of the epoch where resumed.
        progress: a name under which the epochs show their progress (d3codec.util.progress), or None.
        checkpoint: the student's state every minute (d3codec.encode.loop): a student killed on the way goes on from
            there when called again alike, and ends as an uninterrupted one would. Raises: D3Error for another's.
    Returns: (final-epoch test accuracy in [0, 1], training seconds, those before a resume included).
    """
    keep_freed_memory()  # d3codec.util.runtime
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    whole = resample is not None or checkpoint is not None  # these need the images held whole
    data, labeller, held, soft = _student_data(images, targets, Normalisation(mean, std, device), device, whole)
    net, forward, opt, sched = _student(config, data.image_shape, num_classes, len(images), device)
    run = student_run(images, targets, config, seed, num_classes, mean, std, resample is not None) if checkpoint else ()
    loop = ResumableLoop(checkpoint, "student", run, config.epochs, STUDENT_CHECKPOINT_SECONDS)
    loop.resume(LoopState(gen, optimisers={"sgd": opt}, modules={"net": net}), device)
    sched.last_epoch = loop.first  # the learning rate itself came back with the optimiser's groups
    net.train()
    dsa = DSA() if config.dsa else None

    def epoch_of(epoch: int) -> float:
        nonlocal images, held
        if not data.streamed and (epoch == loop.first or resample is not None):
            if epoch > 0 and resample is not None:
                images, fresh = resample(epoch)
                if labeller is None and (fresh.dim() == 2) != soft:
                    raise ValueError("resample must give the same kind of targets (hard or soft) every epoch")
                held = held if labeller is not None else fresh
            data.hold(images, held)
        one_epoch(forward, data, labeller, soft, dsa, opt, gen, config.batch_size)
        sched.step()
        return float("nan")  # the loss is not read: no synchronisation a batch

    loop.run(epoch_of, _epochs_left(loop, config.epochs, progress))
    synchronize(device)
    seconds = loop.seconds  # training alone: before the test pass
    accuracy = test_accuracy(net, *test, mean, std, device)
    loop.remove()
    return accuracy, seconds


def _student_data(
    images, targets: Targets, normalise: Normalisation, device: torch.device, whole: bool
) -> tuple["StudentBatches", torch.nn.Module | None, torch.Tensor | None, bool]:
    """What a student trains on (:class:`StudentBatches`), its labeller (on ``device``) or held targets, and whether
    its targets are soft. Raises: ValueError for images held whole with no targets, or a dataset decoded batch by
    batch where ``whole`` (resampling, a checkpoint) needs them held."""
    labeller = targets.to(device) if isinstance(targets, torch.nn.Module) else None
    held = targets if isinstance(targets, torch.Tensor) else None  # the targets held with the images
    data = StudentBatches(images, normalise, device, labeller is not None)
    if data.streamed and whole:
        raise ValueError("a dataset decoded batch by batch draws anew with set_epoch, and has no checkpoint")
    if not (data.streamed or labeller is not None or held is not None):
        raise ValueError("images held whole need their targets: labels, soft labels or a labeller")
    soft = labeller is not None or (images.has_soft_labels if data.streamed else held is not None and held.dim() == 2)
    return data, labeller, held, soft


def _epochs_left(loop: ResumableLoop, epochs: int, progress: str | None):
    """The epochs a student has left, as a progress bar shown under the name ``progress`` (hidden without one)."""
    return progress_bar(
        range(loop.first, epochs),
        progress or "student",
        enabled=progress is not None,
        unit="epoch",
        initial=loop.first,
        total=epochs,
    )


def _student(
    config: StudentConfig, image_shape: tuple[int, ...], num_classes: int, images: int, device: torch.device
) -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer, MultiStepLR]:
    """A fresh student network for ``config`` (from the global seed), its forward (compiled where worth it), its
    SGD optimiser and its step schedule (lr × 0.1 at half the epochs)."""
    c, h = image_shape[:2]
    net = build_model(config.model, c, num_classes, h).to(device)
    forward = compiled(
        net, config.compile == "on" or (config.compile == "auto" and worth_compiling(config.epochs * images))
    )
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return net, forward, opt, MultiStepLR(opt, [config.epochs // 2], 0.1)


def one_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    data: "StudentBatches",
    labeller: torch.nn.Module | None,
    soft: bool,
    dsa: DSA | None,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    batch_size: int,
) -> None:
    """One epoch of SGD over ``data`` in a random order (from ``gen``), each batch augmented by ``dsa`` (one
    DSA draw a batch, parameters per image) and labelled by ``labeller`` afresh where given (online soft
    labels: pixel-space images → (B, K) probabilities), else by its held targets: soft cross-entropy on soft
    labels (B, K), cross-entropy on classes (B,)."""
    order = torch.randperm(len(data), generator=gen)
    for i in range(0, len(order), batch_size):
        x, held = data.batch(order[i : i + batch_size])
        if dsa is not None:
            x = dsa.apply(x, dsa.sample(gen, n=len(x)))
        y = labeller(data.normalise.inverse(x)) if labeller is not None else held
        assert y is not None, "targets are held wherever no labeller labels the batches"
        logits = forward(x)
        loss = -(y * F.log_softmax(logits, 1)).sum(1).mean() if soft else F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class StudentBatches:
    """What a student trains on, a batch at a time: tensors held whole (normalised on the device once a draw,
    :meth:`hold`), or a dataset with ``batch(index)`` (a lazy d3codec.D3Dataset) decoded batch by batch."""

    def __init__(self, images, normalise: Normalisation, device: torch.device, online: bool):
        self.streamed = not torch.is_tensor(images)
        self.images, self.normalise, self.device, self.online = images, normalise, device, online
        self.image_shape = tuple(images.image_shape if self.streamed else images.shape[1:])
        self.x_all: torch.Tensor | None = None  # (N, C, H, W) normalised, on the device
        self.y_all: torch.Tensor | None = None

    def hold(self, images: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Tensors to train on from now on: images (N, C, H, W) pixel space, targets (N,) or (N, K) or None."""
        self.x_all = self.normalise(images.to(self.device))  # (N, C, H, W) normalised
        self.y_all = targets.to(self.device) if targets is not None else None

    def __len__(self) -> int:
        return len(self.images) if self.streamed else len(self.held_images)

    @property
    def held_images(self) -> torch.Tensor:
        """The images held whole (:meth:`hold`). Raises: RuntimeError before any were held."""
        if self.x_all is None:
            raise RuntimeError("StudentBatches.hold gives the images to train on before the first batch")
        return self.x_all

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``index`` (B,) normalised on the device, and their targets (None where labelled online)."""
        if self.streamed:
            images, hard, soft = self.images.batch(index)
            held = None if self.online else (soft if soft is not None else hard).to(self.device)
            return self.normalise(images.to(self.device)), held
        index = index.to(self.device)
        return self.held_images[index], (self.y_all[index] if self.y_all is not None else None)


def student_run(
    images: torch.Tensor, targets, config: StudentConfig, seed: int, num_classes: int, mean, std, resampled: bool
) -> tuple:
    """What one student's result depends on (its checkpoint's fingerprint): its data, config, seed, classes,
    normalisation and whether it is resampled."""
    data = {"images": images} if isinstance(targets, torch.nn.Module) else {"images": images, "targets": targets}
    labeller = (
        {f"labeller.{k}": v for k, v in targets.state_dict().items()} if isinstance(targets, torch.nn.Module) else {}
    )
    return (asdict(config), seed, num_classes, list(mean), list(std), resampled, weights_digest({**data, **labeller}))


STUDENT_CHECKPOINT_SECONDS = 60.0  # a ConvNet-3's state is a few MB: saving it takes milliseconds


def replay_student(
    schedule,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mean,
    std,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> tuple[float, float]:
    """Train one student by an archive's own schedule (d3codec.nn.schedule.TrainingSchedule.replay: its
    network, step sizes and steps, from its stored θ₀ or, under random init, one drawn from ``seed``)
    and test it. Images (N, C, H, W) float32 pixel space, labels (N,) int64.
    Returns: (test accuracy in [0, 1], training seconds)."""
    keep_freed_memory()
    start = time.time()
    net = schedule.replay(images, labels, num_classes, mean, std, seed, device)
    synchronize(device)  # CUDA runs ahead of the host: the seconds count once its work is done
    seconds = time.time() - start
    return test_accuracy(net, test_images, test_labels, mean, std, device), seconds


def train_students(
    name: str,
    images: torch.Tensor,
    targets: torch.Tensor,
    real: RealData,
    runs: int = 3,
    config: StudentConfig = StudentConfig(),
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    log: Callable[[str], None] | None = None,
    resample: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = False,
) -> EvalResult:
    """Train ``runs`` students (seeds seed, seed+1, ...) on (images, targets) and test each on real data.

    ``test``: the test split (images, labels) (default: :func:`test_split` of ``real``). ``resample(run,
    epoch)``, where given, gives student ``run`` fresh (images, targets) every epoch after the first (see
    :func:`train_student`). ``log`` is called with a line per finished student; ``progress``: each
    student shows its epochs (d3codec.util.progress: a bar in a terminal, a line every 30 s in a log).
    Returns: EvalResult (set its ``file_bytes`` to report the bytes the images take)."""
    test_x, test_y = test if test is not None else test_split(real)
    result = EvalResult(name, len(images))
    for r in range(runs):
        fresh = (lambda epoch, r=r: resample(r, epoch)) if resample is not None else None
        acc, sec = train_student(
            images,
            targets,
            real.num_classes,
            real.mean,
            real.std,
            (test_x, test_y),
            config,
            seed=seed + r,
            device=device,
            resample=fresh,
            progress=f"{name} {r + 1}/{runs}" if progress else None,
        )
        _record(result, acc, sec, runs, log)
    return result


def replay_students(
    name: str,
    schedule,
    images: torch.Tensor,
    labels: torch.Tensor,
    real: RealData,
    runs: int = 1,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Train ``runs`` students by replaying ``schedule`` (a d3codec.nn.schedule.TrainingSchedule) on
    (images, hard labels (N,) int64) and test each (:func:`replay_student`); under a fixed-init
    schedule every run is the same computation. Arguments as :func:`train_students`."""
    if labels.dim() != 1:
        raise ValueError("replaying a schedule trains on hard labels")
    test_x, test_y = test if test is not None else test_split(real)
    result = EvalResult(name, len(images))
    for r in range(runs):
        acc, sec = replay_student(
            schedule, images, labels, real.num_classes, real.mean, real.std, test_x, test_y, seed + r, device
        )
        _record(result, acc, sec, runs, log)
    return result


def _record(result: EvalResult, accuracy: float, seconds: float, runs: int, log) -> None:
    result.accuracies.append(accuracy)
    result.seconds.append(seconds)
    if log:
        log(f"  {result.name} run {len(result.accuracies)}/{runs}: {100 * accuracy:.2f} % ({seconds:.1f} s)")


# the JPEG baseline's default quality: of 10 to 75, 10 and 20 served best at IPC 1 (75.3 and 75.2 %, against 72.7 %
# at 75; benchmarks/per-byte-exploration.md)
JPEG_QUALITY = 20


def image_file(image: torch.Tensor, storage: str, quality: int = JPEG_QUALITY) -> tuple[bytes, torch.Tensor]:
    """One (C, H, W) [0, 1] image as the bytes of an 8-bit image file and the image those bytes decode to.

    Args:
        storage: "png" (lossless, pillow's optimised PNG) or "jpeg" (pillow's baseline JPEG at ``quality``
            1 to 95, 4:2:0 chroma subsampling for colour, optimised Huffman tables).
    Returns: (file bytes, decoded image (C, H, W) float32 in [0, 1]).
    """
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    if storage == "png":
        Image.fromarray(array).save(buf, format="PNG", optimize=True)
    elif storage == "jpeg":
        if not 1 <= quality <= 95:
            raise ValueError(f"JPEG quality must be 1 to 95, not {quality}")
        Image.fromarray(array).save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        raise ValueError(f"image files are 'png' or 'jpeg', not {storage!r}")
    data = buf.getvalue()
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).float() / 255
    decoded = decoded.unsqueeze(0) if decoded.dim() == 2 else decoded.permute(2, 0, 1)
    return data, decoded


def random_real_subset(
    real: RealData, budget: int, storage: str = "float32", seed: int = 0, quality: int = JPEG_QUALITY
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random real training images that fit ``budget`` bytes.

    Args:
        storage: "float32" (C·H·W·4 bytes an image, the same count per class), "png" or "jpeg" (each
            image counts its own file's size, :func:`image_file`; classes take turns until the next image
            would not fit).
        quality: the JPEG quality (storage "jpeg").
    Returns: images (N, C, H, W) float32 in [0, 1] as the stored files decode, labels (N,) int64, bytes used.
    Raises: ValueError for an unknown storage or a budget that holds no float32 image per class.
    """
    gen = torch.Generator().manual_seed(seed)
    k = real.num_classes
    c, h, w = real.image_shape
    orders = [real.class_indices(cl)[torch.randperm(len(real.class_indices(cl)), generator=gen)] for cl in range(k)]
    if storage == "float32":
        per_class = budget // (k * c * h * w * 4)
        if per_class < 1:
            raise ValueError(f"a budget of {budget} bytes holds no float32 image per class")
        chosen = [(cl, o[:per_class]) for cl, o in enumerate(orders)]
        used = per_class * k * c * h * w * 4
        images = torch.cat([real.images_at(idx) for _, idx in chosen])
    elif storage in ("png", "jpeg"):
        picks: list[list[int]] = [[] for _ in range(k)]
        decoded: list[list[torch.Tensor]] = [[] for _ in range(k)]
        used, position, full = 0, 0, False
        while not full:
            for cl in range(k):
                if position >= len(orders[cl]):
                    full = True
                    break
                index = orders[cl][position]
                data, image = image_file(real.images_at(index.view(1))[0], storage, quality)
                if used + len(data) > budget:
                    full = True
                    break
                picks[cl].append(int(index))
                decoded[cl].append(image)
                used += len(data)
            position += 1
        chosen = [(cl, torch.tensor(p, dtype=torch.long)) for cl, p in enumerate(picks)]
        images = torch.stack([x for per_class in decoded for x in per_class])
    else:
        raise ValueError(f"storage must be 'float32', 'png' or 'jpeg', not {storage!r}")
    labels = torch.cat([torch.full((len(idx),), cl, dtype=torch.long) for cl, idx in chosen])
    return images, labels, used
