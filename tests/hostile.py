"""Hand-made archives whose checksums are all valid, as an attacker would write them.

Each builder writes a *consistent* archive of the method it names: the tensors have exactly the
shapes the metadata declares, so it passes every structural check and only the decode budget, the
value rules or the networks' own constraints can refuse it. Zero-filled tensors compress to almost
nothing, which is how a few hundred bytes declare gigabytes. Used by tests/test_trust.py and by the
method-layer mutations of tests/fuzz_archives.py.
"""

from __future__ import annotations

import torch

from d3codec.format.container import Section, encode_archive
from d3codec.format.weights import quantise_state
from d3codec.methods.d2m import ConditionalGenerator
from d3codec.methods.d3 import D3Config, GroupPlan, group_entry, group_tensors, sections_of
from d3codec.nn.models import ConvNet, parameter_shapes

MAX_VALUES = 50_000_000  # the most tensor values a builder writes (the archive may declare far more)


def _bounded(shapes: dict) -> dict:
    """``shapes`` (name → shape), refused with ValueError when they hold more than MAX_VALUES values."""
    total = sum(int(torch.tensor(s).prod()) if s else 1 for s in shapes.values())
    if total > MAX_VALUES:
        raise ValueError(f"{total} values are too many to write here")
    return shapes


def dataset(classes: int, image_shape=(1, 16, 16), name: str = "hostile") -> dict:
    c = image_shape[0]
    return {
        "name": name,
        "classes": [f"c{i}" for i in range(classes)],
        "image_shape": list(image_shape),
        "mean": [0.5] * c,
        "std": [0.25] * c,
    }


def meta(method: str, ds: dict, params: dict, **extra) -> dict:
    return {"format": "d3", "method": method, "dataset": ds, "params": params, "budget": {"bytes": 10**9}, **extra}


def d3_archive(
    classes: int = 2,
    image_shape=(1, 16, 16),
    latent_dim: int = 3,
    priors_per_class: int = 2,
    decoder_width: int = 8,
    groups: int = 1,
    soft_labels: bool = True,
    dtype: str = "int8",
    ds: dict | None = None,
    extra_meta: dict | None = None,
    minor: int = 1,
    label_top_k: int | None = None,
) -> bytes:
    """A D3 archive of zero decoders and priors, uniform soft labels (or, with ``label_top_k`` k, the top k
    stored as zero values at classes 0 … k − 1: the rest of each row spread evenly), ``groups`` contiguous
    groups."""
    from d3codec.methods.d3 import decoder_shapes

    cfg = D3Config(soft_labels=soft_labels, decoder_dtype=dtype, prior_dtype=dtype)
    bounds = [i * classes // groups for i in range(groups + 1)]
    plans = [
        GroupPlan(a, b, latent_dim, priors_per_class, decoder_width, "uniform", label_top_k)
        for a, b in zip(bounds, bounds[1:])
    ]
    for i, g in enumerate(plans):
        k, p = g.num_classes, g.priors_per_class
        _bounded(
            {
                **decoder_shapes(latent_dim, tuple(image_shape), decoder_width),
                "priors": (2 * k, p, latent_dim),
                "labels": (k, p, k if label_top_k is None else 2 * label_top_k),
            }
        )

    def labels(k: int, p: int):
        if label_top_k is None:
            return torch.full((k, p, k), 1 / k)
        return torch.zeros(k, p, label_top_k), torch.arange(label_top_k).expand(k, p, label_top_k)

    parts = [
        group_tensors(g, i, image_shape, cfg, labels=labels(g.num_classes, g.priors_per_class))
        for i, g in enumerate(plans)
    ]
    m = meta(
        "d3",
        ds or dataset(classes, image_shape),
        {"groups": [group_entry(g, cfg) for g in plans]},
        **(extra_meta or {}),
    )
    return encode_archive([Section.json("meta", m)] + sections_of(parts), minor=minor)


def d2m_archive(
    classes: int = 2,
    image_shape=(1, 8, 8),
    noise_dim: int = 3,
    embed_dim: int = 2,
    width: int = 8,
    samples_per_class: int = 4,
    teacher_width: int | None = None,
    dtype: str = "float16",
    ds: dict | None = None,
    params: dict | None = None,
) -> bytes:
    """A D2M archive of a zero generator (and a zero teacher of ``teacher_width``, where given)."""
    shapes = _bounded(parameter_shapes(ConditionalGenerator, classes, noise_dim, embed_dim, width, tuple(image_shape)))
    generator = quantise_state({k: torch.zeros(s) for k, s in shapes.items()}, "", dtype)
    p = {
        "architecture": "upconv-v2",
        "noise_dim": noise_dim,
        "embed_dim": embed_dim,
        "generator_width": width,
        "weight_dtype": dtype,
        "samples_per_class": samples_per_class,
    }
    sections = [Section.tensors("generator", generator)]
    if teacher_width is not None:
        c, h = image_shape[0], image_shape[1]
        try:
            t_shapes = parameter_shapes(ConvNet, c, classes, h, width=teacher_width)
        except (RuntimeError, ValueError):  # too small to build: store a placeholder tensor
            t_shapes = {}
        if not t_shapes or any(0 in s for s in t_shapes.values()):
            t_shapes = {"features.0.weight": (teacher_width, c, 3, 3)}
        _bounded(t_shapes)
        sections.append(
            Section.tensors(
                "teacher", quantise_state({k: torch.zeros(s) for k, s in t_shapes.items()}, "", dtype), critical=False
            )
        )
        p.update(teacher_width=teacher_width, label_temperature=1.0)
    p.update(params or {})
    m = meta("d2m", ds or dataset(classes, image_shape), p)
    return encode_archive([Section.json("meta", m)] + sections)


def pixel_archive(
    classes: int = 2,
    image_shape=(1, 4, 4),
    per_class: int = 1,
    labels_dtype=torch.uint8,
    range_dtype=torch.float32,
    soft_labels: torch.Tensor | None = None,
    ds: dict | None = None,
    meta_critical: bool = True,
    extra_meta: dict | None = None,
) -> bytes:
    """A pixel archive of uint8 zero images, ``per_class`` a class (0 allowed), with an optional
    ``soft_labels`` tensor."""
    n = classes * per_class
    _bounded({"images": (n, *image_shape)})
    tensors = {
        "images": torch.zeros(n, *image_shape, dtype=torch.uint8),
        "labels": torch.arange(classes).repeat_interleave(per_class).to(labels_dtype),
        "range": torch.tensor([[0.0, 1.0]] * classes, dtype=range_dtype),
    }
    m = meta("pixel", ds or dataset(classes, image_shape), {"objective": "dm"}, **(extra_meta or {}))
    sections = [Section.json("meta", m, critical=meta_critical), Section.tensors("images", tensors)]
    if soft_labels is not None:
        sections.append(Section.tensors("soft_labels", {"soft_labels": soft_labels}))
    return encode_archive(sections)


def with_meta_text(data: bytes, text: str) -> bytes:
    """``data``'s archive with its meta section replaced by raw JSON text (for values Python's json
    would not write: 1e400, duplicate keys)."""
    from d3codec.format.container import Content, D3Reader

    with D3Reader(data) as r:
        sections = [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]
    sections[0] = Section("meta", text.encode(), Content.JSON)
    return encode_archive(sections)


def with_tensors(data: bytes, section: str, change) -> bytes:
    """``data``'s archive with ``change(tensors)`` (it edits the dict in place) applied to one safetensors
    section; every checksum is recomputed."""
    from d3codec.format.container import Content, D3Reader

    with D3Reader(data) as r:
        sections = []
        for s in r.sections:
            if s.name == section:
                tensors = r.read_tensors(s.name)
                change(tensors)
                sections.append(Section.tensors(s.name, tensors, s.critical))
            else:
                sections.append(Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical))
    return encode_archive(sections)


def pixel_codes_archive(
    codes: torch.Tensor, formation=None, classes: int = 2, image_shape=(1, 16, 16), ds: dict | None = None
) -> bytes:
    """A pixel archive whose ``images`` section holds ``codes`` as given (any shape and dtype: a formation's
    codes are (N, C, H/f, W/f)) under ``meta.params.formation`` = ``formation`` (any JSON value; None: no
    such field), labels cycling through the classes, and for uint8 codes a range [0, 1] per class."""
    n = codes.shape[0] if codes.dim() else 1
    params = {"objective": "dm", **({"formation": formation} if formation is not None else {})}
    tensors = {
        "images": codes,
        "labels": (torch.arange(n) % classes).to(torch.uint8 if classes <= 256 else torch.int32),
    }
    if codes.dtype == torch.uint8:
        tensors["range"] = torch.tensor([[0.0, 1.0]] * classes)
    m = meta("pixel", ds or dataset(classes, image_shape), params)
    return encode_archive([Section.json("meta", m), Section.tensors("images", tensors)])


def with_labeller(
    data: bytes,
    width: int = 4,
    temperature: float = 1.0,
    dtype: str = "int8",
    described: dict | None = None,
    section: bool = True,
    meta_field: bool = True,
    change=None,
) -> bytes:
    """``data``'s archive with a stored labeller (spec/FORMAT.md §5.8) as d3codec.decode.labeller.labeller_parts
    writes it: a zero ConvNet-3 of ``width`` for the archive's classes and images (8 × 8 ones where its
    images are too small or not square for a ConvNet-3), stored as ``dtype`` (int8 where that is no
    weight dtype). ``described`` replaces the ``meta.labeller`` written; ``section`` / ``meta_field``
    False leave out the section or the field; ``change(tensors)`` edits the section's tensors in place."""
    from d3codec.decode.labeller import labeller_parts
    from d3codec.format.container import Content, D3Reader

    with D3Reader(data) as r:
        sections = [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]
        m = r.read_json("meta")
    ds = m["dataset"]
    c, h, w = ds["image_shape"]
    net = ConvNet(c, len(ds["classes"]), h if h == w and h >= 8 else 8, width=width)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    given, part = labeller_parts(
        net, temperature if 1e-3 <= temperature <= 1e3 else 1.0, dtype if dtype in ("int8", "float16") else "int8"
    )
    if change is not None:
        with D3Reader(encode_archive([part])) as r:
            tensors = r.read_tensors(part.name)
        change(tensors)
        part = Section.tensors(part.name, tensors, critical=False)
    if meta_field:
        sections[0] = Section.json("meta", {**m, "labeller": described if described is not None else given})
    return encode_archive(sections + ([part] if section else []))
