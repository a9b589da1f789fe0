"""Hand-made archives whose checksums are all valid, as an attacker would write them.

Each builder writes a *consistent* archive of the method it names: the tensors have exactly the
shapes the metadata declares, so it passes every structural check and only the decode budget, the
value rules or the networks' own constraints can refuse it. Zero-filled tensors compress to almost
nothing, which is how a few hundred bytes declare gigabytes. Used by tests/test_trust.py and by the
method-layer mutations of tests/fuzz_archives.py.
"""

from __future__ import annotations

import torch

from d3codec.container import Section, encode_archive
from d3codec.methods.d2m import ConditionalGenerator
from d3codec.methods.d3 import D3Config, GroupPlan, group_entry, group_tensors, sections_of
from d3codec.models import ConvNet, parameter_shapes
from d3codec.weights import quantise_state

MAX_VALUES = 50_000_000  # the most tensor values a builder writes (the archive may declare far more)


def _bounded(shapes: dict) -> dict:
    """``shapes`` (name → shape), refused with ValueError when they hold more than MAX_VALUES values."""
    total = sum(int(torch.tensor(s).prod()) if s else 1 for s in shapes.values())
    if total > MAX_VALUES:
        raise ValueError(f"{total} values are too many to write here")
    return shapes


def dataset(classes: int, image_shape=(1, 16, 16), name: str = "hostile") -> dict:
    c = image_shape[0]
    return {"name": name, "classes": [f"c{i}" for i in range(classes)], "image_shape": list(image_shape),
            "mean": [0.5] * c, "std": [0.25] * c}


def meta(method: str, ds: dict, params: dict, **extra) -> dict:
    return {"format": "d3", "method": method, "dataset": ds, "params": params, "budget": {"bytes": 10 ** 9},
            **extra}


def d3_archive(classes: int = 2, image_shape=(1, 16, 16), latent_dim: int = 3, priors_per_class: int = 2,
               decoder_width: int = 8, groups: int = 1, soft_labels: bool = True, dtype: str = "int8",
               ds: dict | None = None, extra_meta: dict | None = None, minor: int = 1) -> bytes:
    """A D3 archive of zero decoders and priors, uniform soft labels, ``groups`` contiguous groups."""
    from d3codec.methods.d3 import decoder_shapes

    cfg = D3Config(soft_labels=soft_labels, decoder_dtype=dtype, prior_dtype=dtype)
    bounds = [i * classes // groups for i in range(groups + 1)]
    plans = [GroupPlan(a, b, latent_dim, priors_per_class, decoder_width) for a, b in zip(bounds, bounds[1:])]
    for i, g in enumerate(plans):
        k, p = g.num_classes, g.priors_per_class
        _bounded({**decoder_shapes(latent_dim, tuple(image_shape), decoder_width), "priors": (2 * k, p, latent_dim),
                  "labels": (k, p, k)})
    parts = [group_tensors(g, i, image_shape, cfg, labels=torch.full((g.num_classes, g.priors_per_class,
                                                                      g.num_classes), 1 / g.num_classes))
             for i, g in enumerate(plans)]
    m = meta("d3", ds or dataset(classes, image_shape), {"groups": [group_entry(g, cfg) for g in plans]},
             **(extra_meta or {}))
    return encode_archive([Section.json("meta", m)] + sections_of(parts), minor=minor)


def d2m_archive(classes: int = 2, image_shape=(1, 8, 8), noise_dim: int = 3, embed_dim: int = 2, width: int = 8,
                samples_per_class: int = 4, teacher_width: int | None = None, dtype: str = "float16",
                ds: dict | None = None, params: dict | None = None) -> bytes:
    """A D2M archive of a zero generator (and a zero teacher of ``teacher_width``, where given)."""
    shapes = _bounded(parameter_shapes(ConditionalGenerator, classes, noise_dim, embed_dim, width, tuple(image_shape)))
    generator = quantise_state({k: torch.zeros(s) for k, s in shapes.items()}, "", dtype)
    p = {"architecture": "upconv-v2", "noise_dim": noise_dim, "embed_dim": embed_dim, "generator_width": width,
         "weight_dtype": dtype, "samples_per_class": samples_per_class}
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
        sections.append(Section.tensors("teacher", quantise_state({k: torch.zeros(s) for k, s in t_shapes.items()},
                                                                  "", dtype), critical=False))
        p.update(teacher_width=teacher_width, label_temperature=1.0)
    p.update(params or {})
    m = meta("d2m", ds or dataset(classes, image_shape), p)
    return encode_archive([Section.json("meta", m)] + sections)


def pixel_archive(classes: int = 2, image_shape=(1, 4, 4), per_class: int = 1, labels_dtype=torch.uint8,
                  range_dtype=torch.float32, soft_labels: torch.Tensor | None = None, ds: dict | None = None,
                  meta_critical: bool = True, extra_meta: dict | None = None) -> bytes:
    """A pixel archive of uint8 zero images, ``per_class`` a class (0 allowed), with an optional
    ``soft_labels`` tensor."""
    n = classes * per_class
    _bounded({"images": (n, *image_shape)})
    tensors = {"images": torch.zeros(n, *image_shape, dtype=torch.uint8),
               "labels": torch.arange(classes).repeat_interleave(per_class).to(labels_dtype),
               "range": torch.tensor([[0.0, 1.0]] * classes, dtype=range_dtype)}
    m = meta("pixel", ds or dataset(classes, image_shape), {"objective": "dm"}, **(extra_meta or {}))
    sections = [Section.json("meta", m, critical=meta_critical), Section.tensors("images", tensors)]
    if soft_labels is not None:
        sections.append(Section.tensors("soft_labels", {"soft_labels": soft_labels}))
    return encode_archive(sections)


def with_meta_text(data: bytes, text: str) -> bytes:
    """``data``'s archive with its meta section replaced by raw JSON text (for values Python's json
    would not write: 1e400, duplicate keys)."""
    from d3codec.container import Content, D3Reader

    with D3Reader(data) as r:
        sections = [Section(s.name, r.read_bytes(s.name), Content(s.content), s.critical) for s in r.sections]
    sections[0] = Section("meta", text.encode(), Content.JSON)
    return encode_archive(sections)
