"""Distillation methods, each one module that registers itself in :mod:`d3codec.methods.registry`.

Importing this package registers the built-in methods: ``dm`` (pixel.py), ``bptt`` (bptt.py), ``d3``
(d3.py) and ``d2m`` (d2m.py), and the archive kinds they write: ``pixel`` (DM's and BPTT's), ``d3`` and
``d2m``. Everything that lists methods reads the registry (``get_method``, ``method_names``,
``archive_kind``); a new method is one module with one ``register_method`` call, imported below.
"""

from . import pixel, bptt, d3, d2m  # each registers itself, in this order (dm first: the default method)
from .base import DatasetSpec, Encoded, Encoder, Sampler
from .registry import (DEFAULT_METHOD, ArchiveKind, BuildContext, Method, Option, archive_kind, archive_kind_names,
                       get_method, method_names, register_archive_kind, register_method)

__all__ = ["pixel", "bptt", "d3", "d2m", "DEFAULT_METHOD", "ArchiveKind", "BuildContext", "Method", "Option", "archive_kind", "archive_kind_names",
           "get_method", "method_names", "register_archive_kind", "register_method", "DatasetSpec", "Encoded",
           "Encoder", "Sampler"]
