"""Encoder checkpoints: the state a long encode needs to go on after a kill, as safetensors + JSON.

A checkpoint holds named tensors (the synthetic data, learned parameters), the optimisers' state,
the random generators' states, the iteration reached and a fingerprint of everything that decides
the result (method, options, plan, seed, data). It is written atomically every ``every_seconds``
(never pickled; safetensors header metadata carries the JSON), so SIGKILL at any moment leaves
either the previous checkpoint or the new one. A run with the same fingerprint resumes from it
and ends with the same archive as an uninterrupted run (on the same device and software); a run
with another fingerprint refuses it rather than mix two runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from d3codec.errors import D3Error
from d3codec.format.limits import all_finite
from d3codec.format.text import safe_text
from d3codec.format.weights import read_safetensors_file

FORMAT = "d3codec-encoder-checkpoint"


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable ``parts`` (options, plan, seed, data description)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors' exact bytes (a given generator's or teacher's weights, for a fingerprint)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        raw = tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # 0-d tensors too
        digest.update(name.encode() + raw.numpy().tobytes())
    return digest.hexdigest()


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list]:
    """An optimiser's state as tensors named ``{prefix}.{param index}.{field}`` and its JSON param groups."""
    state = opt.state_dict()
    tensors = {
        f"{prefix}.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
        for i, s in state["state"].items()
        for k, v in s.items()
    }
    return tensors, state["param_groups"]


# the state each parameter of d3codec's optimisers holds once stepped (a parameter never stepped holds none)
OPTIMIZER_STATE = {
    torch.optim.Adam: {"step", "exp_avg", "exp_avg_sq"},
    torch.optim.AdamW: {"step", "exp_avg", "exp_avg_sq"},
    torch.optim.SGD: {"momentum_buffer"},
}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, groups: list) -> None:
    """Inverse of :func:`flatten_optimizer`. Raises: ValueError for a state tensor of a parameter the optimiser
    does not have, a ``step`` that is not one floating-point count of 0 to MAX_ITERATION, another field not of
    its parameter's shape and dtype, or (for the optimisers of OPTIMIZER_STATE) a parameter whose state lacks a
    field or has one too many."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            i, name = key[len(prefix) + 1 :].split(".", 1)
            index = int(i)
            if not 0 <= index < len(params):
                raise ValueError(f"optimiser state {key!r} belongs to no parameter")
            fits = (
                (value.numel() == 1 and value.is_floating_point() and 0 <= float(value) <= MAX_ITERATION)
                if name == "step"
                else (value.shape == params[index].shape and value.dtype == params[index].dtype)
            )
            if not fits:
                raise ValueError(
                    f"optimiser state {key!r}, {str(value.dtype).removeprefix('torch.')} of shape "
                    f"{tuple(value.shape)}, does not fit its parameter"
                )
            state.setdefault(index, {})[name] = value
    fields = OPTIMIZER_STATE.get(type(opt))
    amsgrad = any(group.get("amsgrad") for group in opt.param_groups)
    for index, held in state.items():
        if fields is not None and set(held) != fields | ({"max_exp_avg_sq"} if amsgrad else set()):
            raise ValueError(f"optimiser state of parameter {index} holds {sorted(held)}, not {sorted(fields)}")
    opt.load_state_dict({"state": state, "param_groups": groups})


MAX_ITERATION = 1 << 31  # the most iterations a checkpoint may say it reached
MAX_HYPERPARAMETER = 1e6  # the largest magnitude of a number in a checkpoint's optimiser groups


def checked_iteration(text) -> int:
    """A checkpoint's ``iteration`` header: decimal digits of 0 to MAX_ITERATION. Raises: ValueError."""
    if not isinstance(text, str) or not text.isdigit() or len(text) > 10 or int(text) > MAX_ITERATION:
        raise ValueError(f"its iteration {safe_text(repr(text), 40)} is not a whole number from 0 to {MAX_ITERATION}")
    return int(text)


def check_groups(opt: torch.optim.Optimizer, groups) -> None:
    """Refuse a checkpoint's parameter groups for ``opt`` unless they are the optimiser's own groups with
    other numbers: the same number of groups, each with the same keys, parameter indices and switches, each
    number from 0 to below MAX_HYPERPARAMETER (fractions below 1). Raises: ValueError."""
    mine = opt.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(mine):
        raise ValueError(f"it holds {describe_json(groups)} for an optimiser of {len(mine)} parameter groups")
    for want, got in zip(mine, groups):
        if not isinstance(got, dict) or set(got) != set(want) or got["params"] != want["params"]:
            raise ValueError("its optimiser groups do not match this run's optimiser")
        for key, value in got.items():
            top = 1.0 if key in FRACTIONS else MAX_HYPERPARAMETER
            if key != "params" and not _same_kind(want[key], value, top):
                raise ValueError(f"its optimiser's {safe_text(key, 40)} is {describe_json(value)}")


FRACTIONS = {"betas", "momentum", "dampening"}  # hyper-parameters in [0, 1) (Adam's bias correction needs it)


def _same_kind(want, value, top: float) -> bool:
    """Whether a checkpoint's ``value`` may stand for ``want`` (a group's current value): a number from 0 to
    below ``top`` for a number (every hyper-parameter of torch's optimisers is non-negative), else ``want``
    itself."""
    if isinstance(want, bool) or want is None or isinstance(want, str):  # switches (amsgrad, capturable, ...)
        return type(value) is type(want) and value == want  # are the code's, not the run's
    if isinstance(want, (int, float)):
        return type(value) in (int, float) and math.isfinite(value) and 0 <= value < top
    if isinstance(want, (list, tuple)):
        return (
            isinstance(value, list)
            and len(value) == len(want)
            and all(_same_kind(w, v, top) for w, v in zip(want, value))
        )
    return False


def describe_json(value) -> str:
    """A short printable description of a JSON value for an error message."""
    return safe_text(repr(value), 60)


def load_prefixed(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Load ``module``'s state from the tensors named ``{prefix}{parameter name}``.
    Raises: RuntimeError when one is missing or of the wrong shape."""
    module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The states of ``generator`` and of torch's global generators (CPU, and every CUDA device once CUDA is
    used: ``rng.cuda`` of device 0, ``rng.cuda{i}`` of device i > 0)."""
    out = {"rng.sampler": generator.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out["rng.cuda" if i == 0 else f"rng.cuda{i}"] = state
    return out


def restore_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    """Inverse of :func:`rng_tensors`. Raises KeyError or RuntimeError on a missing or bad state."""
    generator.set_state(tensors["rng.sampler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        for i in range(torch.cuda.device_count()):  # those the checkpoint knows (a device added since keeps its own)
            key = "rng.cuda" if i == 0 else f"rng.cuda{i}"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key], i)


def write_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (CPU, contiguous) as a safetensors file at ``path`` atomically: into a temporary
    file beside it (safetensors' ``save_file`` writes from the tensors' memory, with no copy of the whole
    file in memory: a D2M generator for ImageNet and its Adam state are over a gigabyte), fsync, rename.
    Raises: OSError (the temporary file is removed)."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpoint:
    """One encode's checkpoint file.

    Args:
        path: the file (``OUTPUT.ckpt.safetensors`` from the CLI).
        kind: what wrote it (e.g. "pixel-dm"); another kind's file is refused.
        run: the fingerprint of the run (see :func:`fingerprint`).
        every_seconds: the least time between two saves; the last iteration is always saved.
    """

    def __init__(self, path: str | Path, kind: str, run: str, every_seconds: float = 300.0):
        self.path, self.kind, self.run, self.every_seconds = Path(path), kind, run, every_seconds
        self._last = time.monotonic()

    def due(self, iteration: int, total: int) -> bool:
        return iteration == total or time.monotonic() - self._last >= self.every_seconds

    def save(
        self,
        iteration: int,
        tensors: dict[str, torch.Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
        generator: torch.Generator,
        modules: dict[str, torch.nn.Module] | None = None,
    ) -> None:
        """Write the state after ``iteration`` iterations (atomically replacing the file): ``tensors``
        by name, each of ``modules``' parameters as ``{module name}.{parameter name}``."""
        out = {f"state.{k}": v for k, v in tensors.items()}
        out.update(
            {f"state.{name}.{k}": v for name, module in (modules or {}).items() for k, v in module.state_dict().items()}
        )
        groups = {}
        for name, opt in optimizers.items():
            flat, groups[name] = flatten_optimizer(opt, f"opt.{name}")
            out.update(flat)
        out.update(rng_tensors(generator))
        out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "run": self.run,
            "iteration": str(iteration),
            "opt_groups": json.dumps(groups),
        }
        write_tensors_atomic(self.path, out, meta)
        self._last = time.monotonic()

    def resume(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        generator: torch.Generator,
        device: torch.device,
        learned: dict[str, torch.Tensor] | None = None,
        modules: dict[str, torch.nn.Module] | None = None,
    ) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Load the file if there is one: restores the optimisers and random states, copies the saved
        tensors into ``learned`` in place and loads ``modules`` (both named as in :meth:`save`), and
        returns (iteration reached, the saved tensors by name); None when there is no file.
        Raises: D3Error when the file belongs to another run or kind, or is damaged."""
        if not self.path.is_file():
            return None
        fix = "; delete it to start afresh"
        tensors, meta = read_safetensors_file(self.path, "checkpoint", fix)
        if meta.get("format") != FORMAT or meta.get("kind") != self.kind:
            raise D3Error(f"{self.path} is not a checkpoint of a {self.kind} encode{fix}")
        if meta.get("run") != self.run:
            raise D3Error(
                f"checkpoint {self.path} was written by a run with other data, options or seed, or by "
                f"another version of d3codec{fix}, or run the same command as before"
            )
        try:
            iteration = checked_iteration(meta.get("iteration"))
            groups = json.loads(meta["opt_groups"])
            if not isinstance(groups, dict):
                raise ValueError("its optimiser groups are not a JSON object")
            restored = ("opt.",) + tuple(f"state.{name}" for name in [*(learned or {}), *(modules or {})])
            for name, tensor in tensors.items():  # what training continues from (a saved loss may be NaN)
                if name.startswith(restored) and not all_finite(tensor):
                    raise ValueError(f"tensor {name!r} holds values that are not finite")
            for name, opt in optimizers.items():
                check_groups(opt, groups.get(name))
                restore_optimizer(opt, {k: v.to(device) for k, v in tensors.items()}, f"opt.{name}", groups[name])
            restore_rng(tensors, generator, device)
            saved = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
            with torch.no_grad():
                for name, tensor in (learned or {}).items():
                    if tuple(saved[name].shape) != tuple(tensor.shape):
                        raise ValueError(f"{name!r} has shape {tuple(saved[name].shape)}, not {tuple(tensor.shape)}")
                    tensor.copy_(saved[name])
            for name, module in (modules or {}).items():
                load_prefixed(module, saved, name + ".")
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise D3Error(
                f"checkpoint {safe_text(str(self.path), 300)} is damaged "
                f"({safe_text(' '.join(str(e).split()), 200)}){fix}"
            ) from None
        return iteration, saved

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
