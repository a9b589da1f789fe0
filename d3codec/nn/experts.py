"""The expert pool: a few ConvNet-3s trained on the real training set, with their weights along training.

Matching through trained networks (DANCE, Zhang et al., IJCAI 2024, Sec. 3.2 and 3.3) needs, for each
expert, its initial weights θ₀ and its trained weights θ_E; a trajectory method (MTT, Cazenavette et
al., CVPR 2022) needs the weights after every epoch. An expert is trained once by
d3codec.nn.teacher.train_teacher (the teachers' recipe: SGD, momentum 0.9, cosine learning rate, flips) and
cached as one safetensors file holding θ₀, θ₁, …, θ_E, so every later run, whatever its method, reads
it back instead of training again.

The cache is a folder: ``--experts DIR`` on ``d3 compress``, else $D3CODEC_EXPERTS, else
~/.cache/d3codec/experts. A file's name says what it was trained on and how; its header repeats it, and
the file is checked (names, shapes, finite values) before any network is built from it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from d3codec.data.real import RealData
from d3codec.errors import D3Error
from d3codec.format.container import write_atomic
from d3codec.format.weights import check_state, read_safetensors_file
from d3codec.nn.models import ConvNet, parameter_shapes
from d3codec.nn.teacher import train_teacher

MAX_EXPERTS = 64
MAX_EXPERT_EPOCHS = 1000


def experts_dir() -> Path:
    """$D3CODEC_EXPERTS, else ~/.cache/d3codec/experts."""
    return Path(os.environ.get("D3CODEC_EXPERTS", Path.home() / ".cache" / "d3codec" / "experts"))


@dataclass(frozen=True)
class ExpertSpec:
    """How the pool is trained. Units: networks, whole epochs over the training set, channels.

    ``seed`` seeds expert i with ``seed + i``; it is the pool's own (not the run's), so every run shares
    one cached pool.
    """

    count: int = 3
    epochs: int = 2
    width: int = 128
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.count <= MAX_EXPERTS or not 1 <= self.epochs <= MAX_EXPERT_EPOCHS or self.width < 1:
            raise ValueError(
                f"an expert pool takes 1 to {MAX_EXPERTS} experts of 1 to {MAX_EXPERT_EPOCHS} epochs and "
                f"width at least 1, not {self.count}, {self.epochs} and {self.width}"
            )


@dataclass
class Expert:
    """One expert's trajectory: ``states[e]`` is its state dict after e epochs (e = 0: initial), float32."""

    states: list[dict[str, torch.Tensor]]
    seconds: float  # what training it cost, where it was trained (0 where unknown)
    accuracy: float  # its training accuracy over the last epoch, a fraction


@dataclass
class ExpertPool:
    """Experts of one dataset: ConvNet-3s of ``width`` on ``image_shape`` with ``num_classes`` outputs, in
    the dataset's class order."""

    experts: list[Expert]
    image_shape: tuple[int, int, int]
    num_classes: int
    width: int
    trained_seconds: float = 0.0  # the seconds this run spent training (0: every expert came from the cache)

    def network(self, state: dict[str, torch.Tensor], device: torch.device) -> ConvNet:
        """A frozen ConvNet-3 holding ``state``."""
        c, h, _ = self.image_shape
        with torch.device("meta"):
            net = ConvNet(c, self.num_classes, h, width=self.width)
        net.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
        return net.eval().requires_grad_(False)

    def middle_encoder(self, device: torch.device) -> tuple[ConvNet, ConvNet]:
        """DANCE's pseudo long-term view (Sec. 3.2): an expert k drawn uniformly and λ ~ U(0, 1), both from
        torch's global generator, give θ = λ·θ₀ᵏ + (1 − λ)·θ_Eᵏ, between that expert's own initial and
        trained weights. Returns: (the middle encoder, the trained expert θ_Eᵏ), both frozen."""
        k = int(torch.randint(len(self.experts), ()))
        lam = float(torch.rand(()))
        first, last = self.experts[k].states[0], self.experts[k].states[-1]
        middle = {name: lam * first[name] + (1 - lam) * last[name] for name in first}
        return self.network(middle, device), self.network(last, device)


def pool_file(folder: Path, real: RealData, spec: ExpertSpec, index: int) -> Path:
    """Where expert ``index`` of ``spec`` for ``real`` is cached: the name spells dataset, shape, classes, training
    images, a digest of the data (:func:`data_digest`) and the recipe."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(real.name)).name)[:64] or "dataset"
    c, h, w = real.image_shape
    return folder / (
        f"{name}-{c}x{h}x{w}-k{real.num_classes}-n{len(real.train_targets)}-{data_digest(real)}"
        f"-w{spec.width}-e{spec.epochs}-seed{spec.seed + index}.safetensors"
    )


def data_digest(real: RealData) -> str:
    """12 hex digits of SHA-256 over the training labels and three training images (first, middle, last): two
    folders of one name and size holding other images get other experts, at the cost of reading three images."""
    n = len(real.train_targets)
    digest = hashlib.sha256(real.train_targets.to(torch.int64).numpy().tobytes())
    images = real.images_at(torch.tensor(sorted({0, n // 2, n - 1})))
    digest.update((images * 255).round().to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def expert_pool(
    real: RealData,
    spec: ExpertSpec = ExpertSpec(),
    folder: str | os.PathLike | None = None,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
    log=None,
) -> ExpertPool:
    """The pool ``spec`` describes for ``real``: each expert read from the cache ``folder`` (default
    :func:`experts_dir`), or trained on all of ``real``'s classes and written there (atomically).

    Raises: D3Error naming the file where a cached expert is not what its name says.
    """
    folder = Path(folder) if folder is not None else experts_dir()
    experts, spent = [], 0.0
    for i in range(spec.count):
        path = pool_file(folder, real, spec, i)
        if path.is_file():
            experts.append(read_expert(path, real, spec))
            continue
        if log:
            log(f"training expert {i + 1}/{spec.count} ({spec.epochs} epochs, width {spec.width}) into {path}")
        # training seeds torch's generators; the caller's draws must not depend on whether the cache had the expert
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            expert = train_expert(real, spec, i, device, progress)
        spent += expert.seconds
        folder.mkdir(parents=True, exist_ok=True)
        write_expert(path, expert, real, spec)
        experts.append(expert)
    c, h, w = real.image_shape
    return ExpertPool(experts, (c, h, w), real.num_classes, spec.width, spent)


def train_expert(real: RealData, spec: ExpertSpec, index: int, device: torch.device, progress: bool = False) -> Expert:
    """Train expert ``index`` of ``spec`` on every class of ``real`` (d3codec.nn.teacher.train_teacher), keeping
    its state after every epoch."""
    states: list[dict[str, torch.Tensor]] = []

    def keep(epoch: int, net: ConvNet) -> None:  # called with epochs 0, 1, 2, ... in order
        states.append({k: v.detach().float().cpu().clone() for k, v in net.state_dict().items()})

    start = time.time()
    batch = min(256, len(real.train_targets))  # a whole epoch is at least one step, even on tiny data
    _, accuracy = train_teacher(
        real,
        list(range(real.num_classes)),
        epochs=spec.epochs,
        width=spec.width,
        batch_size=batch,
        device=device,
        seed=spec.seed + index,
        progress=progress,
        snapshot=keep,
        name=f"expert {index + 1}/{spec.count}",
    )
    return Expert(states[: spec.epochs + 1], time.time() - start, accuracy)


def write_expert(path: Path, expert: Expert, real: RealData, spec: ExpertSpec) -> None:
    """One safetensors file: tensors ``epoch{e}/{name}``, and the recipe in the header."""
    tensors = {f"epoch{e}/{k}": v.contiguous() for e, state in enumerate(expert.states) for k, v in state.items()}
    meta = {
        "model": "convnet3",
        "dataset": str(real.name)[:200],
        "image_shape": ",".join(map(str, real.image_shape)),
        "classes": str(real.num_classes),
        "width": str(spec.width),
        "epochs": str(len(expert.states) - 1),
        "seconds": f"{expert.seconds:.1f}",
        "accuracy": f"{expert.accuracy:.6f}",
    }
    write_atomic(path, save(tensors, metadata=meta))


def read_expert(path: Path, real: RealData, spec: ExpertSpec) -> Expert:
    """A cached expert, checked against what ``spec`` and ``real`` make: every epoch's state has exactly a
    ConvNet-3's tensors and shapes, finite. Raises: D3Error naming the file and the fix."""
    what = f"cached expert {path} (delete it to train it again)"
    tensors, header = read_safetensors_file(path, "cached expert", f"; delete {path} to train it again")
    c, h, _ = real.image_shape
    shapes = parameter_shapes(ConvNet, c, real.num_classes, h, width=spec.width)
    states = []
    for e in range(spec.epochs + 1):
        prefix = f"epoch{e}/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        check_state(state, shapes, f"{what}, epoch {e}")
        states.append({k: v.float() for k, v in state.items()})
    if len(tensors) != len(shapes) * (spec.epochs + 1):
        raise D3Error(
            f"{what}: holds {len(tensors)} tensors, not the {len(shapes) * (spec.epochs + 1)} of "
            f"{spec.epochs + 1} epochs"
        )
    try:
        seconds, accuracy = float(header.get("seconds", 0)), float(header.get("accuracy", 0))
    except ValueError:
        seconds, accuracy = 0.0, 0.0
    return Expert(states, seconds, accuracy)
