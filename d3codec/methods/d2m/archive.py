"""Reading D2M archives: the stored generator, drawn at any number of samples per class, and the stored
teacher that labels them (where the archive has one). Nothing here trains (encoder.py does).
"""

from __future__ import annotations

import torch

from d3codec.decode.labeller import Labeller
from d3codec.decode.sampler import Sampler
from d3codec.errors import D3FormatError
from d3codec.format import noise
from d3codec.format.limits import DEFAULT_LIMITS, batch_size, check, default_draw_cap, draw_macs, network_cost
from d3codec.format.meta import meta_int, meta_number, meta_str
from d3codec.format.weights import WEIGHT_DTYPES, load_stored_module
from d3codec.methods.d2m.networks import GENERATORS, ConditionalGenerator
from d3codec.nn.models import ConvNet

SECTIONS = {"meta": True, "generator": True, "teacher": False}  # name → critical

# ---- the generator --------------------------------------------------------------------------------------------------

MAX_SAMPLES = 10_000_000  # the largest default draw an archive may declare (the decode limits apply too)


def read_params(meta: dict) -> tuple[str, int, int, int, str, int]:
    """(architecture, noise_dim, embed_dim, width, weight_dtype, default samples per class) from the
    metadata, each checked for its JSON type and range. Raises: D3FormatError naming the field."""
    p = meta.get("params")
    if not isinstance(p, dict):
        raise D3FormatError("meta: 'params' of a d2m archive must be an object")
    return (
        meta_str(p, "architecture", tuple(GENERATORS), "params."),
        meta_int(p, "noise_dim", 1, 4096, "params."),
        meta_int(p, "embed_dim", 1, 4096, "params."),
        meta_int(p, "generator_width", 4, 4096, "params."),
        meta_str(p, "weight_dtype", WEIGHT_DTYPES, "params."),
        meta_int(p, "samples_per_class", 1, MAX_SAMPLES, "params."),
    )


def read_label_params(meta: dict, has_section: bool) -> tuple[int, float] | None:
    """(teacher width, label temperature) of a d2m archive that stores a teacher, else None.

    Raises: D3FormatError when the metadata and the ``teacher`` section disagree or the values are not sane.
    """
    p = meta["params"]
    declared = "teacher_width" in p or "label_temperature" in p
    if declared != has_section:
        raise D3FormatError(
            "a d2m archive with a 'teacher' section needs 'params.teacher_width' and "
            "'params.label_temperature', and one without it must not declare them"
        )
    if not declared:
        return None
    return meta_int(p, "teacher_width", 1, 4096, "params."), meta_number(p, "label_temperature", 1e-3, 1e3, "params.")


class D2MSampler(Sampler):
    """A D2M archive's generator (and teacher, where stored), loaded (see :func:`load_sampler`)."""

    def __init__(self, reader, meta: dict, device: torch.device | str = "cpu", limits=None):
        ds = meta["dataset"]
        k, shape = len(ds["classes"]), tuple(ds["image_shape"])
        self.num_classes, self.image_shape, self.device = k, shape, device
        self.limits, self.version = limits or DEFAULT_LIMITS, tuple(reader.version)
        architecture, z, e, width, dtype, declared = read_params(meta)
        self.draw_cap = default_draw_cap(reader.file_size, k, shape)
        self.default = min(declared, self.draw_cap)  # what the archive is worth bounds what it declares
        self.noise_dim = z

        def build() -> ConditionalGenerator:  # costed on the meta device first, then loaded
            return ConditionalGenerator(k, z, e, width, shape, architecture)

        cost = network_cost(build, lambda: (torch.zeros(1, z), torch.zeros(1, dtype=torch.long)), "the generator")
        labelling = labeller_cost(meta, "teacher" in reader)
        total = cost + labelling if labelling is not None else cost
        check("values", total.parameters, self.limits, "max_parameters", "the generator and teacher")
        check("multiply-adds", total.macs, self.limits, "max_macs_per_image", "generating (and labelling) one image")
        self.batch = batch_size(total, self.limits)
        self.image_macs = total.macs
        self.generator = load_stored_module(
            build, reader.read_tensors("generator"), "", dtype, "generator", device, exact=True
        )
        self.label = load_labeller(reader, meta, device, self.limits)
        self.soft = self.label is not None

    def class_counts(self, samples_per_class: int | None) -> list[int]:
        return [samples_per_class or self.default] * self.num_classes

    def counts(self, samples_per_class: int | None) -> tuple[int, int]:
        n = samples_per_class or self.default
        return self.num_classes * n, self.num_classes * n * self.noise_dim

    def macs(self, samples_per_class: int | None) -> int:
        return draw_macs(self.num_classes * (samples_per_class or self.default), self.image_macs, self.noise_dim)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """The noise of a draw of ``n`` per class, (K·N, Z) float32, row c·N + j for sample j of class c.
        Format 1.1: the counter-based noise of spec/FORMAT.md §5.4 keyed by (class, sample), so the first
        N samples of a larger draw are those of a draw of N; 1.0: one (K, N, Z) standard normal draw
        from a torch CPU generator seeded with ``seed``, as d3codec 0.1 drew it."""
        k, z = self.num_classes, self.noise_dim
        if self.version >= (1, 1):
            return torch.from_numpy(noise.normal(seed, noise.D2M_NOISE, (k, n, z))).view(k * n, z)
        return torch.randn(k, n, z, generator=torch.Generator().manual_seed(seed % (1 << 64))).view(k * n, z)

    @torch.no_grad()
    def _decode_at(self, samples_per_class: int | None, seed: int, classes: torch.Tensor, samples: torch.Tensor):
        z = torch.from_numpy(noise.normal_at(seed, noise.D2M_NOISE, classes.numpy(), samples.numpy(), self.noise_dim))
        images = torch.empty(len(classes), *self.image_shape)
        soft = torch.empty(len(classes), self.num_classes) if self.label is not None else None
        for i in range(0, len(classes), self.batch):
            batch = self.generator(z[i : i + self.batch].to(self.device), classes[i : i + self.batch].to(self.device))
            images[i : i + len(batch)] = batch.cpu()  # (B, C, H, W) in [0, 1]
            if soft is not None and self.label is not None:  # both or neither
                soft[i : i + len(batch)] = self.label(batch).cpu()  # (B, K)
        return images, soft

    @torch.no_grad()
    def _draw_v10(self, samples_per_class: int | None, seed: int):
        k, n = self.num_classes, samples_per_class or self.default
        z = self.noise(n, seed)
        labels = torch.arange(k).repeat_interleave(n)  # (K·N,) class-major
        images, soft = [], []
        for i in range(0, k * n, self.batch):
            batch = self.generator(z[i : i + self.batch].to(self.device), labels[i : i + self.batch].to(self.device))
            images.append(batch.cpu())  # (B, C, H, W) in [0, 1]
            if self.label is not None:
                soft.append(self.label(batch).cpu())  # (B, K)
        return torch.cat(images), labels, torch.cat(soft) if self.label is not None else None


def load_sampler(reader, meta: dict, device: torch.device | str = "cpu", limits=None) -> D2MSampler:
    """The archive's generator, ready to draw: ``sampler(samples_per_class, seed)`` →
    (images (K·N, C, H, W) float32 in [0, 1], labels (K·N,) int64, soft labels (K·N, K) float32
    or None). ``samples_per_class`` N defaults to ``meta.params.samples_per_class``, at most ``draw_cap``
    (d3codec.format.limits.default_draw_cap).

    Images come class by class; sample j of class c is the generator's image of noise row (c, j)
    (see :meth:`D2MSampler.noise`) and class c. Where the archive stores a teacher, each image's soft
    label is the teacher's softmax, at the stored temperature, on the image normalised with the
    dataset's mean and std.

    ``limits`` (d3codec.format.limits.DecodeLimits): the generator's and teacher's multiply-adds per image and
    parameters are checked at load, before any tensor is allocated; each draw's output before it is made.
    Raises: D3FormatError when the generator or teacher section does not match the metadata, or a
    network cannot run on the declared image size; D3LimitError past the limits.
    """
    return D2MSampler(reader, meta, device, limits)


def labeller_cost(meta: dict, has_section: bool):
    """The cost (d3codec.format.limits.NetworkCost) of the stored teacher on one image, or None without one.
    Raises: D3FormatError for a teacher that cannot run on the images (ConvNet-3 needs H = W ≥ 8)."""
    labelling = read_label_params(meta, has_section)
    if labelling is None:
        return None
    ds = meta["dataset"]
    k, (c, h, w) = len(ds["classes"]), tuple(ds["image_shape"])
    if h != w:
        raise D3FormatError(f"a d2m archive's teacher is a ConvNet-3 for square images, not {h}×{w}")
    return network_cost(
        lambda: ConvNet(c, k, h, width=labelling[0]),
        lambda: (torch.zeros(1, c, h, w),),
        "the stored teacher (a ConvNet-3)",
    )


def load_labeller(reader, meta: dict, device: torch.device | str = "cpu", limits=None) -> Labeller | None:
    """The archive's stored teacher as a labeller (d3codec.decode.labeller.Labeller), or None when it stores none: it
    takes (B, C, H, W) float32 images in [0, 1] (on ``device``) and returns (B, K) float32 soft labels
    on ``device``, the teacher's softmax at the stored temperature on the normalised images. It labels
    any images of the dataset's shape, generated or real (a same-labels baseline, as DD-Ranking's).
    Raises: D3FormatError when the teacher section does not match the metadata or cannot run on the
    images; D3LimitError when it passes ``limits`` (d3codec.format.limits.DecodeLimits).
    """
    ds = meta["dataset"]
    k, (c, h, _) = len(ds["classes"]), tuple(ds["image_shape"])  # ConvNet-3 takes square images: w = h
    dtype = read_params(meta)[4]
    cost = labeller_cost(meta, "teacher" in reader)
    if cost is None:
        return None
    limits = limits or DEFAULT_LIMITS
    check("values", cost.parameters, limits, "max_parameters", "the stored teacher")
    check("multiply-adds", cost.macs, limits, "max_macs_per_image", "labelling one image")
    params = read_label_params(meta, True)
    assert params is not None  # has_section: declared, or D3FormatError
    width, temperature = params
    teacher = load_stored_module(
        lambda: ConvNet(c, k, h, width=width), reader.read_tensors("teacher"), "", dtype, "teacher", device, exact=True
    )
    return Labeller(teacher, ds["mean"], ds["std"], temperature)  # as a §5.8 labeller labels


def decode(
    reader,
    meta: dict,
    samples_per_class: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    limits=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Generate ``samples_per_class`` images per class (default: the archive's) from a D2M archive;
    see :func:`load_sampler`."""
    return load_sampler(reader, meta, device, limits)(samples_per_class, seed)


def describe_params(params: dict) -> str:
    """A D2M archive's ``meta.params`` in a few words (d3 info, and the line d3 compress ends with)."""
    teacher = (
        f", a ConvNet-3 teacher of width {int(params['teacher_width'])} for soft labels"
        if params.get("teacher_width")
        else ""
    )
    return (
        f"generator {params['architecture']} of width {int(params['generator_width'])} ({params['weight_dtype']}), "
        f"noise {int(params['noise_dim'])}, class embeddings {int(params['embed_dim'])}{teacher}; draws "
        f"{int(params['samples_per_class'])} per class by default"
    )
