"""d3codec: compress a labelled image dataset into a small, safe ``.d3`` archive and train on it again."""

__version__ = "0.1.0"

from .container import D3Reader, Section, encode_archive, write_archive  # noqa: E402
from .dataset import D3Dataset  # noqa: E402
from .errors import D3BudgetError, D3DatasetError, D3Error, D3FormatError, D3LimitError  # noqa: E402
from .limits import DecodeLimits  # noqa: E402

__all__ = ["D3Dataset", "D3Reader", "Section", "encode_archive", "write_archive", "DecodeLimits", "D3Error",
           "D3FormatError", "D3LimitError", "D3BudgetError", "D3DatasetError", "__version__"]
