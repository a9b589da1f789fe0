"""How network weights and latent tables are stored: int8 with a float16 scale per channel, or float16.

The methods that store networks (d3's decoders, d2m's generators and teachers) write each state
dict with :func:`quantise_state` and read it back with :func:`dequantise_state` (or
:func:`load_stored_module`, which fills a network with it); every read checks names,
shapes and dtypes against the shapes the metadata implies and raises D3FormatError, so a
hostile archive cannot load a tensor of a size it did not declare.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from d3codec.errors import D3Error, D3FormatError
from d3codec.format.limits import all_finite
from d3codec.format.text import safe_text

WEIGHT_DTYPES = ("int8", "float16")


def quantise_int8(value: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one scale per index along ``dim``: value ≈ q · scale.

    Args: value float tensor; dim the axis that keeps its own scale (0: per output channel).
    Returns: q int8 of value's shape, scale (value.shape[dim],) float16.
    """
    value = value.detach().float().cpu()
    moved = value.movedim(dim, 0)
    scale = (moved.flatten(1).abs().amax(1).clamp_min(1e-8) / 127).half()  # (S,) as stored
    shape = [1] * value.dim()
    shape[dim] = -1
    q = (value / scale.float().view(shape)).round().clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def dequantise_int8(q: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    """float32 q · scale, the scale broadcast along ``dim`` (the inverse of :func:`quantise_int8`)."""
    shape = [1] * q.dim()
    shape[dim] = -1
    return q.float() * scale.float().view(shape)


def quantise_state(state: dict[str, torch.Tensor], prefix: str, dtype: str) -> dict[str, torch.Tensor]:
    """Tensors to store for a state dict: weights (ndim ≥ 2) as int8 with a float16 scale per output
    channel (symmetric, w ≈ q · scale) or as float16; other parameters as float16."""
    out = {}
    for name, value in state.items():
        if dtype == "int8" and value.dim() >= 2:
            out[f"{prefix}{name}"], out[f"{prefix}{name}.scale"] = quantise_int8(value, 0)
        else:
            out[f"{prefix}{name}"] = value.detach().float().cpu().half().contiguous()
    return out


def stored_zeros(shapes: dict[str, tuple[int, ...]], prefix: str, dtype: str) -> dict[str, torch.Tensor]:
    """What :func:`quantise_state` stores for parameters of these shapes, as zeros of the stored dtypes,
    without a float32 copy first: a plan's placeholder, whose bytes count exactly as the real ones."""
    out = {}
    for name, shape in shapes.items():
        if dtype == "int8" and len(shape) >= 2:
            out[f"{prefix}{name}"] = torch.zeros(shape, dtype=torch.int8)
            out[f"{prefix}{name}.scale"] = torch.zeros(shape[0], dtype=torch.float16)
        else:
            out[f"{prefix}{name}"] = torch.zeros(shape, dtype=torch.float16)
    return out


def stored_names(shapes: dict[str, tuple[int, ...]], prefix: str, dtype: str) -> set[str]:
    """The tensor names :func:`quantise_state` writes for parameters of these shapes under ``prefix``."""
    names = {f"{prefix}{name}" for name in shapes}
    if dtype == "int8":
        names |= {f"{prefix}{name}.scale" for name, shape in shapes.items() if len(shape) >= 2}
    return names


def check_names(tensors: dict[str, torch.Tensor], expected: set[str], section: str) -> None:
    """Refuse a section whose tensor names are not exactly ``expected`` (spec/FORMAT.md §5: a section
    holds the tensors it defines and nothing else). Raises: D3FormatError naming a missing or extra one."""
    got = set(tensors)
    if got != expected:
        extra, missing = sorted(got - expected), sorted(expected - got)
        which = f"an unexpected tensor {extra[0]!r}" if extra else f"no tensor {missing[0]!r}"
        raise D3FormatError(f"section {section!r} holds {which} ({len(extra)} extra, {len(missing)} missing)")


def stored_tensor(
    tensors: dict[str, torch.Tensor],
    section: str,
    key: str,
    shape: tuple[int, ...],
    int8_dim: int | None,
    floats: tuple[torch.dtype, ...] = (torch.float16,),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A stored tensor of ``shape`` as the archive stores it, checked: (I8 value, its F16 ``{key}.scale``
    (n,) along ``int8_dim``), or, when ``int8_dim`` is None, (value of one of the dtypes ``floats``, None).
    Its float32 value (:func:`read_stored`) is then finite: an int8 times a finite float16 scale is.

    Raises: D3FormatError naming ``section`` and ``key`` on a missing, misshapen or mistyped tensor, or
    one holding a NaN or an infinity (the value, or the scale of an int8 one).
    """
    value = tensors.get(key)
    if value is None or tuple(value.shape) != shape:
        raise D3FormatError(f"section {section!r}: tensor {key!r} missing or not of shape {shape}")
    if int8_dim is None:
        if value.dtype not in floats:
            names = " or ".join(str(d).removeprefix("torch.") for d in floats)
            raise D3FormatError(
                f"section {section!r}: {key!r} must be {names}, not {str(value.dtype).removeprefix('torch.')}"
            )
        return (_finite(value, section, key) if value.is_floating_point() else value), None
    scale, n = tensors.get(f"{key}.scale"), shape[int8_dim]
    if value.dtype != torch.int8 or scale is None or tuple(scale.shape) != (n,) or scale.dtype != torch.float16:
        raise D3FormatError(f"section {section!r}: {key!r} must be int8 with a ({n},) float16 scale")
    return value, _finite(scale, section, key)


def read_stored(
    tensors: dict[str, torch.Tensor],
    section: str,
    key: str,
    shape: tuple[int, ...],
    int8_dim: int | None,
    floats: tuple[torch.dtype, ...] = (torch.float16,),
) -> torch.Tensor:
    """The float32 value of a stored tensor of ``shape`` (see :func:`stored_tensor`): an I8 one times its
    F16 scale along ``int8_dim`` (see :func:`quantise_int8`; the product is computed in float32), or one
    of the dtypes ``floats`` (F16 unless the spec allows more), converted exactly.

    Raises: D3FormatError naming ``section`` and ``key`` on a missing, misshapen or mistyped tensor, or
    one whose float32 value is not finite.
    """
    value, scale = stored_tensor(tensors, section, key, shape, int8_dim, floats)
    return value.float() if scale is None or int8_dim is None else dequantise_int8(value, scale, int8_dim)


def _finite(value: torch.Tensor, section: str, key: str) -> torch.Tensor:
    """``value``, refused where any of it is NaN or infinite (spec/FORMAT.md §5.2: stored weights, latents
    and labels are finite, and so is their float32 product with a scale)."""
    if not all_finite(value):
        raise D3FormatError(f"section {section!r}: {key!r} holds values that are not finite (NaN or infinite)")
    return value


def dequantise_state(
    tensors: dict[str, torch.Tensor], prefix: str, shapes: dict[str, tuple[int, ...]], dtype: str, section: str
) -> dict[str, torch.Tensor]:
    """The float32 state dict stored by :func:`quantise_state` (``shapes``: each parameter's shape).

    Raises: D3FormatError naming ``section`` on any missing, misshapen or mistyped tensor.
    """
    return {
        name: read_stored(
            tensors, section, f"{prefix}{name}", shape, 0 if dtype == "int8" and len(shape) >= 2 else None
        )
        for name, shape in shapes.items()
    }


def load_stored_module(
    build: Callable[[], nn.Module],
    tensors: dict[str, torch.Tensor],
    prefix: str,
    dtype: str,
    section: str,
    device: torch.device | str = "cpu",
    exact: bool = False,
) -> nn.Module:
    """The network ``build()`` makes, filled with the state :func:`quantise_state` stored under
    ``prefix``: built on the meta device, so no memory is spent until every stored tensor has been
    checked against the network's shapes. Returns it on ``device``, in eval mode.

    ``exact``: the section holds this network's tensors and nothing else (else other tensors, such as
    other groups', may sit beside them).
    Raises: D3FormatError naming ``section`` on any missing, misshapen, mistyped or extra tensor.
    """
    with torch.device("meta"):
        module = build()
    shapes = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    if exact:
        check_names(tensors, stored_names(shapes, prefix, dtype), section)
    module.load_state_dict(dequantise_state(tensors, prefix, shapes, dtype, section), assign=True)
    return module.to(device).eval()


def read_safetensors_file(path, what: str, fix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the header metadata of a safetensors file (a teacher, a generator, a checkpoint).

    Raises: D3Error "{what} {path} is not readable as a safetensors file (why){fix}" (the path escaped), for
    a bad file and for a panic of the safetensors library on one.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # safetensors raises several types for a bad file, and Rust panics
        raise D3Error(
            f"{what} {safe_text(str(path), 300)} is not readable as a safetensors file ({safe_text(str(e), 200)}){fix}"
        ) from None


def check_state(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Refuse a network's state dict read from a user's file unless it holds exactly the tensors ``shapes``
    names (name → shape), each a floating-point tensor of that shape whose values are all finite: checked
    before any network is built from it.

    Raises: D3Error "{what}: ..." naming the first tensor that differs."""
    got, want = set(state), set(shapes)
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        which = f"an unexpected tensor {extra[0]!r}" if extra else f"no tensor {missing[0]!r}"
        raise D3Error(f"{what}: holds {which} ({len(extra)} extra, {len(missing)} missing)")
    for name, shape in shapes.items():
        value = state[name]
        if tuple(value.shape) != tuple(shape) or not value.is_floating_point():
            raise D3Error(
                f"{what}: tensor {name!r} is {str(value.dtype).removeprefix('torch.')} of shape "
                f"{tuple(value.shape)}, not floating-point of shape {tuple(shape)}"
            )
        if not all_finite(value):
            raise D3Error(f"{what}: tensor {name!r} holds values that are not finite (NaN or infinite)")
