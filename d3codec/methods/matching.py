"""Distribution matching through random or partly trained networks: the loop that DM, D3 and D2M share.

Every iteration draws a ConvNet-3 φ: freshly initialised (``matching="dm"``: Zhao & Bilen, "Dataset
Condensation with Distribution Matching", WACV 2023, Sec. 3.2), or DANCE's middle encoder between an
expert's initial and trained weights (``matching="dance"``: Zhang et al., IJCAI 2024, Sec. 3.2; the pool
is d3codec.nn.experts), whose trained expert then also calibrates the synthetic images (:class:`CalibrationTerm`,
Sec. 3.3). Then, class by class (``class_chunk`` classes at a
time, to bound memory), it takes a synthetic batch from the method and a real batch of the same
class, applies one DSA draw to both (siamese augmentation, Zhao & Bilen, ICML 2021, Sec. 3), and
sums the method's per-class :class:`MatchingTerm` losses; gradients accumulate chunk by chunk, so
the caller steps its optimiser once per iteration. The methods differ only in how they make
synthetic images (pixels, decoded priors, a generator) and in their terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from d3codec.data.real import Normalisation, RealData
from d3codec.nn.augment import DSA
from d3codec.nn.experts import ExpertPool, ExpertSpec, expert_pool
from d3codec.nn.losses import prediction_matching_loss
from d3codec.nn.models import ConvNet, compiled
from d3codec.nn.teacher import Teacher
from d3codec.registry import Option

MATCHINGS = ("dm", "dance")  # the network each iteration embeds with: random (DM) or a middle encoder (DANCE)


@dataclass
class MatchingBatch:
    """What the terms of one chunk see, after siamese DSA: ``synthetic`` (n, m, C, H, W) and ``real``
    (n, r, C, H, W), normalised, for n classes; ``network`` the iteration's ConvNet-3 (random, or a middle
    encoder); ``expert`` the trained expert of a DANCE iteration (else None); ``classes`` the n classes'
    dataset indices (the expert's outputs).

    :meth:`features` embeds both sides once per extractor, whichever terms ask (the real side
    without gradients).
    """

    synthetic: torch.Tensor
    real: torch.Tensor
    network: ConvNet
    expert: ConvNet | None = None
    classes: Sequence[int] = ()
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None  # the network's embed, compiled (None: eager)
    _features: dict = field(default_factory=dict)

    def features(
        self, extractor: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, m, D) synthetic and (n, r, D) real features of ``extractor`` (images (N, C, H, W) →
        (N, D); default the random network's penultimate features)."""
        # one forward pass per extractor and chunk, shared by the terms: the gradient then sums in one
        # fixed order (keys are stable: the random network by name, others by the object, kept alive here)
        key = "network" if extractor is None else id(extractor)
        if key not in self._features:
            embed = extractor or self.embed or self.network.embed
            n, m, r = self.synthetic.shape[0], self.synthetic.shape[1], self.real.shape[1]
            f_syn = embed(self.synthetic.flatten(0, 1)).view(n, m, -1)
            with torch.no_grad():
                f_real = embed(self.real.flatten(0, 1)).view(n, r, -1)
            self._features[key] = (f_syn, f_real, extractor)
        return self._features[key][:2]


class MatchingTerm(Protocol):
    """One term of an objective: a scalar loss for a chunk of classes. A trajectory-matching term
    would hold its expert trajectories and use ``batch.synthetic`` directly."""

    def __call__(self, batch: MatchingBatch) -> torch.Tensor: ...


@dataclass
class FeatureTerm:
    """Σ_c weight · loss(φ(x̃_c), φ(x_c)) for a feature loss of d3codec.nn.losses: ``mean_embedding_loss``
    (DM, Zhao & Bilen 2023, Eq. 4) or ``mmd_rbf`` (Qin et al. 2024, Eq. 6, MMD part). ``extractor``:
    None for the random network, or another (a teacher's ``embed``)."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight: float = 1.0
    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, batch: MatchingBatch) -> torch.Tensor:
        f_syn, f_real = batch.features(self.extractor)
        total = f_syn[0].new_zeros(())
        for c in range(len(f_syn)):
            total = total + self.loss(f_syn[c], f_real[c])
        return self.weight * total


@dataclass
class PredictionTerm:
    """Σ_c weight · τ² · KL(mean p_T(x_c) ‖ mean p_T(x̃_c)), a teacher's mean predictions on the two
    sides (D2M's prediction matching, Sajedi et al. 2024; d3codec.nn.losses.prediction_matching_loss).
    ``teacher`` is a d3codec.nn.teacher.Teacher."""

    teacher: Teacher
    temperature: float
    weight: float = 1.0

    def __call__(self, batch: MatchingBatch) -> torch.Tensor:
        net, out = self.teacher.net, self.teacher.out_index
        total = batch.synthetic.new_zeros(())
        for c in range(len(batch.synthetic)):
            with torch.no_grad():
                t_real = net(batch.real[c])[:, out]  # (r, K)
            t_syn = net(batch.synthetic[c])[:, out]  # (m, K)
            total = total + prediction_matching_loss(t_real, t_syn, self.temperature)
        return self.weight * total


@dataclass
class CalibrationTerm:
    """DANCE's distribution calibration (Zhang et al. 2024, Sec. 3.3): weight · Σ_c mean_j CE(θ_E(x̃_c,j), c),
    the iteration's trained expert classifying the augmented synthetic images as their class, which keeps
    them inside their class's region. DANCE alternates it with the matching step; here it is summed into
    the same step (equal in the first order of the learning rate). Zero in an iteration without an expert."""

    weight: float = 1.0

    def __call__(self, batch: MatchingBatch) -> torch.Tensor:
        if batch.expert is None or self.weight == 0:
            return batch.synthetic.new_zeros(())
        n, m = batch.synthetic.shape[:2]
        logits = batch.expert(batch.synthetic.flatten(0, 1))  # (n·m, K of the dataset)
        targets = torch.tensor(list(batch.classes), device=logits.device).repeat_interleave(m)
        return self.weight * F.cross_entropy(logits, targets, reduction="sum") / m


def memory_sized_chunk(
    num_classes: int,
    synthetic_per_class: int,
    real_per_class: int,
    image_shape: tuple[int, int, int],
    embed_width: int,
    budget_bytes: int,
    synthetic_extra_bytes: int = 0,
) -> int:
    """Classes per forward pass whose activations fit ``budget_bytes`` (at least 1, at most ``num_classes``).

    An estimate from the shapes, not a measurement: a synthetic image keeps about 5 float32 maps of
    embed_width·H·W through the random ConvNet-3 (about 4 saved for the backward pass, counted with
    saved-tensor hooks at 28 and 64 pixels, and what the backward pass adds), plus ``synthetic_extra_bytes``
    of its own (a decoder's or a generator's activations); a real image, embedded without gradients, about 3
    at a time. Chunks change the order of the random draws (real batches, DSA), not the objective.
    """
    _, h, w = image_shape
    per_map = embed_width * h * w * 4
    per_class = synthetic_per_class * (5 * per_map + synthetic_extra_bytes) + real_per_class * 3 * per_map
    return max(1, min(num_classes, budget_bytes // max(1, per_class)))


@dataclass
class DistributionMatcher:
    """The shared matching loop over ``num_classes`` classes (local indices 0 … K−1).

    Attributes:
        real_images: ``real_images(i, r, gen)`` → r real images of local class i, (r, C, H, W) float32
            in [0, 1] (e.g. d3codec.data.real.ClassSampler.sample).
        real_per_class: r, the real images per class and iteration.
        normalise: pixel space → the networks' input.
        dsa: the augmentation (None: none).
        embed_width: the random ConvNet-3's width (128 in DM's paper).
        class_chunk: classes per forward pass; memory grows with it (memory_sized_chunk); it orders the
            random draws, not the objective.
        experts: DANCE's pool (d3codec.nn.experts): each iteration then embeds with a middle encoder of a drawn
            expert instead of a random network (None: DM's random networks).
        class_ids: the dataset index of each local class (default 0 … K−1), for the experts' outputs.
        compile: embed through torch.compile (d3codec.nn.models.compiled): one network module is kept and each
            iteration's weights are copied into it, so it compiles once; the draws stay the same.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    real_images: Callable[[int, int, torch.Generator], torch.Tensor]
    real_per_class: int
    normalise: Normalisation
    dsa: DSA | None
    embed_width: int
    class_chunk: int
    device: torch.device
    experts: ExpertPool | None = None
    class_ids: Sequence[int] | None = None
    compile: bool = False
    _kept: tuple | None = field(default=None, init=False, repr=False)  # (module, its compiled embed)

    def compiled_embed(self, network: ConvNet) -> tuple[ConvNet, Callable[[torch.Tensor], torch.Tensor] | None]:
        """(``network``, None) eagerly; compiled: the kept module holding ``network``'s weights, and its
        compiled embed."""
        if not self.compile:
            return network, None
        if self._kept is None:  # every iteration's network has the same architecture
            self._kept = (network, compiled(network.embed, True, dynamic=None))
            return self._kept
        with torch.no_grad():
            for kept, new in zip(self._kept[0].state_dict().values(), network.state_dict().values()):
                kept.copy_(new)
        return self._kept

    def random_network(self) -> ConvNet:
        """A freshly initialised ConvNet-3 (from torch's global generator), frozen."""
        c, h, _ = self.image_shape
        return ConvNet(c, self.num_classes, h, width=self.embed_width).to(self.device).requires_grad_(False)

    def networks(self) -> tuple[ConvNet, ConvNet | None]:
        """The iteration's embedding network and its trained expert: (random, None) for DM, (middle encoder,
        trained expert) for DANCE; drawn from torch's global generator."""
        if self.experts is None:
            return self.random_network(), None
        return self.experts.middle_encoder(self.device)

    def step(
        self,
        synthesize: Callable[[Sequence[int]], torch.Tensor],
        terms: Sequence[MatchingTerm],
        gen: torch.Generator,
        classes: Sequence[int] | None = None,
    ) -> float:
        """One iteration: gradients of Σ_terms over every class (or over ``classes``, local indices)
        accumulated into whatever ``synthesize`` differentiates through (zero them before, step after).

        ``synthesize(chunk)`` → the synthetic images of those local classes (a range, or a list where
        ``classes`` is given), (n, m, C, H, W) normalised, with gradients. Returns: the loss, summed over
        the chunks.
        """
        (network, expert), total = self.networks(), 0.0
        network, embed = self.compiled_embed(network)
        every = classes if classes is not None else range(self.num_classes)
        ids = self.class_ids if self.class_ids is not None else range(self.num_classes)
        for lo in range(0, len(every), self.class_chunk):
            chunk = every[lo : lo + self.class_chunk]
            synthetic = synthesize(chunk)
            real = torch.stack([self.real_images(i, self.real_per_class, gen) for i in chunk]).to(self.device)
            real = self.normalise(real.flatten(0, 1)).view(real.shape)
            if self.dsa is not None:  # one draw per class, applied to both sides: siamese augmentation
                draws = [self.dsa.sample(gen) for _ in chunk]
                synthetic = torch.stack([self.dsa.apply(synthetic[j], d) for j, d in enumerate(draws)])
                real = torch.stack([self.dsa.apply(real[j], d) for j, d in enumerate(draws)])
            batch = MatchingBatch(synthetic, real, network, expert, [ids[i] for i in chunk], embed)
            loss = terms[0](batch)
            for term in terms[1:]:
                loss = loss + term(batch)
            loss.backward()
            total += loss.detach().item()
        return total


MATCHING_OPTIONS = (
    Option(
        "--matching",
        "matching",
        "The networks matching embeds with: dm, a fresh random ConvNet-3 each iteration "
        "(Zhao & Bilen 2023); dance, a middle encoder between an expert's initial and trained weights, plus the "
        "trained expert's calibration (Zhang et al. 2024). dance trains an expert pool once (cached: --experts).",
        kind="choice",
        choices=MATCHINGS,
    ),
    Option(
        "--expert-count", "expert_count", "Experts in dance's pool (ConvNet-3s of the embedding width).", low=1, high=64
    ),
    Option("--expert-epochs", "expert_epochs", "Epochs over the real training set of each expert.", low=1, high=1000),
    Option(
        "--calibration-weight",
        "calibration_weight",
        "Weight of dance's calibration term (0: none).",
        kind="float",
        low=0,
        high=1000,
    ),
)


def matching_experts(
    matching: str, real: RealData, count: int, epochs: int, width: int, device: torch.device, progress: bool = False
) -> ExpertPool | None:
    """The expert pool ``matching`` needs (None for dm): ``count`` ConvNet-3s of ``width`` trained ``epochs`` on
    every class of ``real``, from the cache (d3codec.nn.experts) or trained now.

    Raises: ValueError for a matching that is not one of MATCHINGS."""
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {', '.join(MATCHINGS)}, not {matching!r}")
    if matching == "dm":
        return None
    return expert_pool(real, ExpertSpec(count, epochs, width), device=device, progress=progress)


def matching_terms(pool: ExpertPool | None, calibration_weight: float) -> list[MatchingTerm]:
    """The terms a matching adds to a method's own: DANCE's calibration where there is a pool."""
    return [CalibrationTerm(calibration_weight)] if pool is not None and calibration_weight > 0 else []
