"""d3codec: compress a labelled image dataset into a small, safe ``.d3`` archive and train on it again.

In Python::

    import d3codec
    d3codec.compress("fashion-mnist", "fm.d3", ipc=10, method="dm")   # distil (d3codec.encode.pipeline)
    ds = d3codec.D3Dataset("fm.d3")                                     # a torch Dataset (d3codec.decode.dataset)
    result = d3codec.evaluate("fm.d3", epochs=300, runs=3)              # students (d3codec.evaluation.protocol)
"""

from d3codec import (
    _compat,
    methods,  # registers the built-in methods (d3codec.registry) before anything reads an archive
)
from d3codec.decode.dataset import D3Dataset
from d3codec.encode.pipeline import CompressResult, compress
from d3codec.errors import D3BudgetError, D3DatasetError, D3Error, D3FormatError, D3LimitError
from d3codec.evaluation.protocol import EvalProtocol, Evaluation, evaluate
from d3codec.format.container import D3Reader, Section, encode_archive, write_archive
from d3codec.format.limits import DecodeLimits
from d3codec.version import __version__

__all__ = [
    "compress",
    "evaluate",
    "D3Dataset",
    "CompressResult",
    "EvalProtocol",
    "Evaluation",
    "D3Reader",
    "Section",
    "encode_archive",
    "write_archive",
    "DecodeLimits",
    "D3Error",
    "D3FormatError",
    "D3LimitError",
    "D3BudgetError",
    "D3DatasetError",
    "methods",
    "__version__",
]

_compat.install()  # d3codec 0.1's module paths (d3codec.container, ...) for one release


def __getattr__(name: str):
    return _compat.old_attribute(name)
