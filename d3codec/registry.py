"""The method registry: every distillation method registers one :class:`Method`, and every kind of archive
one :class:`ArchiveKind`; nothing else in d3codec lists methods.

In the manner of timm's model registry, a method's module ends with its registration::

    register_archive_kind(ArchiveKind("pixel", sections={...}, decode=decode))
    register_method(Method("dm", "DM distribution matching on pixels", archive="pixel", encoder=DMEncoder,
                           build=build, options=(...)))

and everything that lists methods reads the registry: the ``d3 compress`` subcommands and their options
(cli/), ``d3 verify`` and ``d3 info`` (d3codec.decode.verify, d3codec.format.meta), the reader (D3Dataset),
d3codec.compress (d3codec.encode.pipeline) and the benchmarks. A test registers a toy method and sees it in all of them.

Two names, two registries: a **method** is how an archive is made (``dm``, ``bptt``, ``d3``, ``d2m``: what a
user types); an **archive kind** is what an archive's ``meta.method`` says and how it is read (``pixel``
holds the archives of both DM and BPTT, spec/FORMAT.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import torch

if TYPE_CHECKING:  # for annotations only: the registry sits below every module it names (tests/test_layout.py)
    from _typeshed import DataclassInstance

    from d3codec.decode.labeller import Labeller
    from d3codec.decode.sampler import Sampler
    from d3codec.encode.interface import Encoder
    from d3codec.format.container import D3Reader
    from d3codec.format.limits import DecodeLimits
    from d3codec.nn.schedule import TrainingSchedule

Meta = dict[str, Any]  # an archive's metadata section, as validated JSON (spec/FORMAT.md §5)

OPTION_KINDS = ("int", "float", "choice", "flag", "file", "path")


@dataclass(frozen=True)
class Option:
    """One command-line option of a method, without click (the CLI builds the click option from it).

    Attributes:
        name: the option as typed, e.g. ``"--decoder-width"``; a flag's negative form is added
            (``--soft-labels/--no-soft-labels``).
        field: the config field it overrides (passed as ``options[field]`` to :attr:`Method.build`), or
            an argument of build that is no config field (``teacher``, ``generator``: file paths).
        help: one sentence; the CLI adds the presets' defaults of a config field.
        kind: ``"int"`` (an integer in [low, high]), ``"float"`` (finite, in [low, high]), ``"choice"``
            (one of ``choices``), ``"flag"`` (on/off), ``"file"`` (an existing file) or ``"path"`` (a file to write).
        low, high: the range of an int or float (None: unbounded on that side).
        choices: the values of a choice.
    """

    name: str
    field: str
    help: str
    kind: str = "int"
    low: float | None = 1
    high: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in OPTION_KINDS:
            raise ValueError(f"option {self.name}: kind must be one of {', '.join(OPTION_KINDS)}, not {self.kind!r}")
        if not self.name.startswith("--") or (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"option {self.name}: names start with '--', and a choice (only) lists its choices")


@dataclass(frozen=True)
class BuildContext:
    """What building an encoder needs beside its preset and options.

    Attributes:
        output: the archive the run writes (checkpoint names derive from it).
        checkpoint: the ``--checkpoint`` a user gave, or None for the method's default name.
        device: where the teacher or generator a user gave is loaded.
        image_shape: (C, H, W) of the real data; num_classes: K.
        checkpoints: False for an encoder that writes no checkpoint at all (d3codec.compress's default).
    """

    output: Path
    checkpoint: Path | None = None
    device: torch.device = torch.device("cpu")
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    checkpoints: bool = True

    def checkpoint_or(self, suffix: str) -> Path | None:
        """The user's checkpoint, or ``OUTPUT<suffix>`` (e.g. ``fm.d3.ckpt.safetensors``); None without checkpoints."""
        if not self.checkpoints:
            return None
        return self.checkpoint if self.checkpoint is not None else Path(f"{self.output}{suffix}")

    def beside_output(self, suffix: str) -> Path | None:
        """``OUTPUT<suffix>``, a second checkpoint file (None without checkpoints)."""
        return Path(f"{self.output}{suffix}") if self.checkpoints else None


# the options of every method that uses a teacher: build() receives the files (it loads --teacher)
TEACHER_OPTION = Option(
    "--teacher",
    "teacher",
    "A ConvNet-3 teacher (.safetensors, as --save-teacher writes) instead of training one.",
    kind="file",
)
SAVE_TEACHER_OPTION = Option(
    "--save-teacher",
    "save_teacher",
    "Write the teacher trained here to this .safetensors "
    "file, for --teacher in later runs (which then skip its training).",
    kind="path",
)
TEACHER_EPOCHS_OPTION = Option(
    "--teacher-epochs",
    "teacher_epochs",
    "Epochs of the teacher trained here (fractions allowed).",
    kind="float",
    low=0.01,
    high=10_000,
)


class Build(Protocol):
    """``build(method, preset, options, context)`` → a ready encoder (:attr:`Method.build`)."""

    def __call__(self, method: "Method", preset: str, options: dict[str, Any], context: BuildContext) -> "Encoder": ...


class Decode(Protocol):
    """``decode(reader, meta, limits)`` → (images (N, C, H, W) float32 in [0, 1], labels (N,) int64, soft labels
    (N, K) float32 or None) of an archive that stores its images."""

    def __call__(
        self, reader: "D3Reader", meta: Meta, limits: "DecodeLimits | None" = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


class LoadSampler(Protocol):
    """``load_sampler(reader, meta, device, limits)`` → the sampler of an archive that generates its images."""

    def __call__(
        self, reader: "D3Reader", meta: Meta, device: torch.device | str = "cpu", limits: "DecodeLimits | None" = None
    ) -> "Sampler": ...


class ReadSchedule(Protocol):
    """``read_schedule(reader, meta, limits)`` → the archive's training schedule, or None."""

    def __call__(
        self, reader: "D3Reader", meta: Meta, limits: "DecodeLimits | None" = None
    ) -> "TrainingSchedule | None": ...


class ReadLabeller(Protocol):
    """``read_labeller(reader, meta, device, limits)`` → the kind's own stored labeller, or None."""

    def __call__(
        self, reader: "D3Reader", meta: Meta, device: torch.device | str = "cpu", limits: "DecodeLimits | None" = None
    ) -> "Labeller | None": ...


def _default_build(method: "Method", preset: str, options: dict[str, Any], context: BuildContext) -> "Encoder":
    """A checkpointed encoder's (d3codec.encode.interface.CheckpointedEncoder.from_options); other encoders give
    their method a build of their own."""
    checkpointed: Any = method.encoder
    return checkpointed.from_options(preset, context.checkpoint_or(".ckpt.safetensors"), **options)


@dataclass(frozen=True)
class Method:
    """A distillation method: how the ``d3`` command, d3codec.compress and the benchmarks make its encoder.

    Attributes:
        name: what users type (``d3 compress NAME``, ``compress(method=NAME)``): lower case, no spaces.
        summary: one line for ``d3 compress --help``, citing the paper.
        archive: the :class:`ArchiveKind` its archives are (their ``meta.method``).
        encoder: its d3codec.encode.interface.Encoder class; ``encoder.presets`` maps a preset name
            (``fast``, ``paper``, ...) to its config dataclass, whose fields the options override.
        options: its own command-line options (beside the shared ones: budget, data, run, checkpoint).
        build: ``build(method, preset, options, context)`` → a ready encoder; ``options`` maps each given
            option's field to its value. Default: ``encoder.from_options(preset, OUTPUT.ckpt.safetensors,
            **options)``.
        subtasks: its encodes split into subtasks spread over ranks (``--workers N``, torchrun).
        checkpoint_help: what ``--checkpoint`` means for it.
        hints: another method's option → what to use with this one instead, for the refusal of that option.
    """

    name: str
    summary: str
    archive: str
    encoder: "type[Encoder]"
    options: tuple[Option, ...] = ()
    build: Build = _default_build
    subtasks: bool = False
    checkpoint_help: str = (
        "the file a killed encode resumes from by running the same command again (default: "
        "OUTPUT.ckpt.safetensors, written every 5 minutes, deleted once the archive is written)"
    )
    hints: Mapping[str, str] = field(default_factory=dict)

    @property
    def presets(self) -> Mapping[str, "DataclassInstance"]:
        """Preset name → config (a dataclass instance)."""
        return self.encoder.presets

    def config_fields(self) -> set[str]:
        """The names of the config's fields (what an option may override)."""
        return {f.name for f in fields(next(iter(self.presets.values())))}

    def make_encoder(
        self, preset: str = "fast", options: dict[str, Any] | None = None, context: BuildContext | None = None
    ) -> "Encoder":
        """The encoder for ``preset`` with ``options`` (field → value; None values are left out).

        Raises: ValueError for an unknown preset, or an option that is neither a config field nor an
        option of this method, or a value of the wrong type (see d3codec.encode.interface.coerce_config)."""
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for {self.name}; use one of {', '.join(self.presets)}")
        given = {k: v for k, v in (options or {}).items() if v is not None}
        known = self.config_fields() | {o.field for o in self.options}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"{self.name} has no option {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
        return self.build(self, preset, given, context or BuildContext(Path("out.d3")))


@dataclass(frozen=True)
class ArchiveKind:
    """How archives whose ``meta.method`` is :attr:`name` are read.

    Attributes:
        name: the ``meta.method`` value (spec/FORMAT.md §5).
        sections: every section this kind defines → its critical flag. A reader refuses another critical
            section, skips another ancillary one, and refuses a known one flagged otherwise.
        decode: for archives that store their images: ``decode(reader, meta, limits)`` → (images (N, C, H, W)
            float32 in [0, 1], labels (N,) int64, soft labels (N, K) float32 or None).
        load_sampler: for archives that generate their images: ``load_sampler(reader, meta, device, limits)``
            → a d3codec.decode.sampler.Sampler. Exactly one of decode and load_sampler is given.
        read_schedule: where the archives may carry a training schedule: ``read_schedule(reader, meta,
            limits)`` → d3codec.nn.schedule.TrainingSchedule or None.
        describe: ``describe(meta["params"])`` → what an archive stores in a few words, for ``d3 info``'s
            first line and the line ``d3 compress`` ends with (it may raise KeyError, TypeError or
            ValueError on params it cannot read).
        labeller_section / read_labeller: where the kind stores a labeller of its own (D2M's ``teacher``,
            the first case of spec/FORMAT.md §5.8's labeller): the section's name, and
            ``read_labeller(reader, meta, device, limits)`` → d3codec.decode.labeller.Labeller or None. An archive's
            generic ``labeller`` section comes first.
    """

    name: str
    sections: Mapping[str, bool]
    decode: Decode | None = None
    load_sampler: LoadSampler | None = None
    read_schedule: ReadSchedule | None = None
    describe: Callable[[Any], str] | None = None
    labeller_section: str | None = None
    read_labeller: ReadLabeller | None = None

    def __post_init__(self):
        if (self.decode is None) == (self.load_sampler is None):
            raise ValueError(f"archive kind {self.name!r}: give exactly one of decode and load_sampler")
        if self.sections.get("meta") is not True:
            raise ValueError(f"archive kind {self.name!r}: its sections must include the critical 'meta'")
        object.__setattr__(self, "sections", MappingProxyType(dict(self.sections)))

    @property
    def sampled(self) -> bool:
        """Whether its images are drawn (any number per class) rather than stored."""
        return self.load_sampler is not None


_METHODS: dict[str, Method] = {}
_KINDS: dict[str, ArchiveKind] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (before or after its archive kind). Returns it.

    Raises: ValueError for a name already taken or not lower-case letters, digits and '-'."""
    if method.name in _METHODS:
        raise ValueError(f"a method named {method.name!r} is registered already")
    if not method.name or not method.name.replace("-", "").isalnum() or method.name != method.name.lower():
        raise ValueError(f"method names are lower-case letters, digits and '-', not {method.name!r}")
    _METHODS[method.name] = method
    return method


def register_archive_kind(kind: ArchiveKind) -> ArchiveKind:
    """Add ``kind`` to the registry. Returns it. Raises: ValueError for a name already taken."""
    if kind.name in _KINDS:
        raise ValueError(f"an archive kind named {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove the method ``name``, and its archive kind where no other method uses it (for tests and plug-ins)."""
    method = _METHODS.pop(name)
    if all(m.archive != method.archive for m in _METHODS.values()):
        _KINDS.pop(method.archive, None)


def method_names() -> list[str]:
    """The registered methods' names, in the order they were registered."""
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The method registered as ``name``. Raises: ValueError naming the registered ones."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {str(name)[:60]!r}; use one of {', '.join(_METHODS)}") from None


def archive_kind(name: str) -> ArchiveKind | None:
    """The archive kind whose ``meta.method`` is ``name``, or None where this d3codec knows none."""
    return _KINDS.get(name) if isinstance(name, str) else None


def archive_kind_names() -> list[str]:
    return list(_KINDS)


def methods_of_kind(kind: str) -> list[Method]:
    """The methods that write archives of ``kind``."""
    return [m for m in _METHODS.values() if m.archive == kind]


__all__ = [
    "Option",
    "TEACHER_OPTION",
    "SAVE_TEACHER_OPTION",
    "TEACHER_EPOCHS_OPTION",
    "BuildContext",
    "Method",
    "ArchiveKind",
    "register_method",
    "register_archive_kind",
    "unregister",
    "method_names",
    "get_method",
    "archive_kind",
    "archive_kind_names",
    "methods_of_kind",
]
