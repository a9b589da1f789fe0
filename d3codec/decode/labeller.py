"""The stored labeller: a small network in an archive that gives soft labels to any image it is shown.

Any archive may carry one (spec/FORMAT.md §5.8): the ancillary section ``labeller`` holds a ConvNet-3's
parameters (d3codec.format.weights: int8 with a scale per output channel, or float16), and ``meta.labeller``
says its width, temperature and storage. Its bytes count in the budget like every other section. A
student trained on the archive can ask it for the soft label of every *augmented* batch (``online``),
as SRe2L, RDED and FKD relabel crops with a teacher, but here with the teacher stored and paid for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from d3codec.data.real import Normalisation
from d3codec.errors import D3FormatError
from d3codec.format.accounting import archive_bound
from d3codec.format.container import Section
from d3codec.format.limits import DEFAULT_LIMITS, check, network_cost
from d3codec.format.meta import meta_int, meta_number, meta_str
from d3codec.format.weights import WEIGHT_DTYPES, load_stored_module, quantise_state
from d3codec.nn.models import ConvNet

SECTION = "labeller"
NETWORKS = ("convnet3",)


class Labeller(nn.Module):
    """Images (N, C, H, W) float32 in pixel space (D3Dataset's scale) → soft labels (N, K) float32
    probabilities: softmax(net((x − mean) / std) / temperature). In eval mode, without gradients."""

    def __init__(self, net: nn.Module, mean, std, temperature: float):
        super().__init__()
        self.net, self.temperature = net.eval(), float(temperature)
        self.normalise = Normalisation(mean, std, next(net.parameters()).device)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.net(self.normalise(images)) / self.temperature, dim=1)  # (N, K)


def labeller_parts(net: ConvNet, temperature: float, dtype: str = "int8") -> tuple[dict, Section]:
    """What an archive stores for the labeller ``net`` (a ConvNet-3 for the archive's images and
    classes): (``meta.labeller``, the ancillary ``labeller`` section). Raises: ValueError for a dtype
    other than int8 or float16, or a temperature that is not in [0.001, 1000]."""
    if dtype not in WEIGHT_DTYPES or not 1e-3 <= temperature <= 1e3:
        raise ValueError(
            f"a labeller is stored as {' or '.join(WEIGHT_DTYPES)} with a temperature from 0.001 to "
            f"1000, not {dtype!r} and {temperature!r}"
        )
    width = net.features[0].out_channels
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return (
        {"network": "convnet3", "width": width, "temperature": float(temperature), "dtype": dtype},
        Section.tensors(SECTION, quantise_state(state, "", dtype), critical=False),
    )


def section_cost(section: Section) -> int:
    """The bytes ``section`` adds to an archive at most: its table entry and its data with compression off
    (a stored section is never larger than its raw form)."""
    empty = Section.json("meta", {})
    return archive_bound([empty, section], 0) - archive_bound([empty], 0)


def stored_bytes(reader, section: str = SECTION) -> int:
    """The bytes an archive's labeller takes in its file: its section (``labeller``, or a kind's own such as
    D2M's ``teacher``) as stored and its table entry (0 where it has none). ``reader``: a
    d3codec.format.container.D3Reader."""
    info = next((s for s in reader.sections if s.name == section), None)
    return 0 if info is None else info.stored_length + section_cost(Section.raw(section, b""))


def read_labeller(reader, meta: dict, device: torch.device | str = "cpu", limits=None) -> Labeller | None:
    """The archive's labeller, or None where it stores none (or ``meta.labeller`` is absent: then the
    section, ancillary, is not read). Its values and multiply-adds per image are checked against
    ``limits`` (d3codec.format.limits.DecodeLimits) before anything is allocated.

    Raises: D3FormatError for a malformed ``meta.labeller``, a network that cannot run on the images, or
    tensors that do not match it; D3LimitError past the limits."""
    described = meta.get("labeller")
    if described is None:
        if SECTION in reader:
            raise D3FormatError("the archive has a 'labeller' section but meta.labeller does not describe it")
        return None
    meta_str(described, "network", NETWORKS, "labeller.")
    width = meta_int(described, "width", 1, 4096, "labeller.")
    temperature = meta_number(described, "temperature", 1e-3, 1e3, "labeller.")
    dtype = meta_str(described, "dtype", WEIGHT_DTYPES, "labeller.")
    if SECTION not in reader:
        raise D3FormatError("meta.labeller describes a labeller but the archive has no 'labeller' section")
    ds = meta["dataset"]
    k, (c, h, w) = len(ds["classes"]), tuple(ds["image_shape"])
    if h != w:
        raise D3FormatError(f"the labeller is a ConvNet-3, for square images, not {h}×{w}")
    cost = network_cost(lambda: ConvNet(c, k, h, width=width), lambda: (torch.zeros(1, c, h, w),), "the labeller")
    limits = limits or DEFAULT_LIMITS
    check("values", cost.parameters, limits, "max_parameters", "the labeller")
    check("multiply-adds", cost.macs, limits, "max_macs_per_image", "labelling one image")
    net = load_stored_module(
        lambda: ConvNet(c, k, h, width=width), reader.read_tensors(SECTION), "", dtype, SECTION, device, exact=True
    )
    return Labeller(net, ds["mean"], ds["std"], temperature)


def as_stored(net: ConvNet, image_shape: tuple[int, int, int], mean, std, dtype: str, temperature: float) -> Labeller:
    """``net`` (a ConvNet-3 for images of ``image_shape`` (C, H, W)) as an archive's reader gets it back: its
    weights through ``dtype`` storage (``"int8"`` rounds them; d3codec.format.weights), with ``temperature``:
    the labeller that a fair baseline of real images shares with the archive."""
    (c, h, _), k = image_shape, net.classifier.out_features
    conv = net.features[0]
    assert isinstance(conv, nn.Conv2d)  # a ConvNet's first layer (d3codec.nn.models)
    width = conv.out_channels
    tensors = quantise_state({n: v.detach().cpu() for n, v in net.state_dict().items()}, "", dtype)
    stored = load_stored_module(lambda: ConvNet(c, k, h, width=width), tensors, "", dtype, SECTION, exact=True)
    return Labeller(stored, mean, std, temperature)
