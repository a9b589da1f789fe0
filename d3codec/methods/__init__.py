"""Distillation methods: one package each, registered in :mod:`d3codec.registry`.

Importing this package registers the built-in methods and the archive kinds they write:

- ``pixel/``: methods ``dm`` (dm.py) and ``bptt`` (bptt.py), archive kind ``pixel`` (archive.py reads it);
- ``d3/``: method and archive kind ``d3`` (encoder.py trains, archive.py reads, merge.py merges);
- ``d2m/``: method and archive kind ``d2m`` (encoder.py, networks.py, archive.py).

d3codec.encode.interface holds the interfaces every method implements (Encoder, SubtaskEncoder),
d3codec.decode.sampler the one sampled archives implement (Sampler), and
matching.py the distribution-matching loop DM, D3 and D2M share. A new method is one package whose
``__init__`` calls ``register_method`` (and ``register_archive_kind`` for a new kind of archive),
imported below; everything that lists methods reads the registry.
"""

from d3codec.decode.sampler import Sampler
from d3codec.encode.interface import DatasetSpec, Encoded, Encoder, Overrun, Subtask, SubtaskEncoder
from d3codec.registry import (
    ArchiveKind,
    BuildContext,
    Method,
    Option,
    archive_kind,
    archive_kind_names,
    get_method,
    method_names,
    register_archive_kind,
    register_method,
)

# isort: off
# each registers itself, in this order (d3codec.encode.defaults picks among them)
from d3codec.methods import pixel
from d3codec.methods import d3
from d3codec.methods import d2m
# isort: on

__all__ = [
    "pixel",
    "d3",
    "d2m",
    "ArchiveKind",
    "BuildContext",
    "Method",
    "Option",
    "archive_kind",
    "archive_kind_names",
    "get_method",
    "method_names",
    "register_archive_kind",
    "register_method",
    "DatasetSpec",
    "Encoded",
    "Encoder",
    "Overrun",
    "Sampler",
    "Subtask",
    "SubtaskEncoder",
]
