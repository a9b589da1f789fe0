"""The exceptions d3codec raises on purpose.

Every error a user can cause (a malformed archive, a budget that cannot be met, a dataset that
cannot be found) is one of these, with a message that says what is wrong and how to fix it.
"""


class D3Error(Exception):
    """Base class of every error d3codec raises on purpose."""


class D3FormatError(D3Error, ValueError):
    """An archive is malformed, corrupt, hostile, of an unsupported version, or too costly to decode.

    The message names the place: a byte offset and, where known, the section.
    """


class D3BudgetError(D3Error, ValueError):
    """A byte budget cannot be met. ``min_budget`` holds the smallest budget that would work."""

    def __init__(self, message: str, min_budget: int | None = None):
        super().__init__(message)
        self.min_budget = min_budget


class D3DatasetError(D3Error, FileNotFoundError):
    """A real dataset cannot be found or read. The message says where we looked."""


class D3LimitError(D3FormatError):
    """Decoding an archive (or a requested expansion) would cost more than the reader's limits allow
    (d3codec.format.limits.DecodeLimits): refused before anything is allocated. ``figure`` names what was
    counted, ``value`` and ``limit`` are the numbers, ``option`` the setting that raises the limit."""

    def __init__(self, message: str, figure: str = "", value: int = 0, limit: int = 0, option: str = ""):
        super().__init__(message)
        self.figure, self.value, self.limit, self.option = figure, value, limit, option
