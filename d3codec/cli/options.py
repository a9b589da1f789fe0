"""Option types and helpers every ``d3`` command shares: one-line refusals with exit status 1, ranges
checked before any work, the decode-limit options, and errors made printable."""

from __future__ import annotations

import math
import re

import click

from d3codec.format.text import safe_text


def in_flags(message: str) -> str:
    """``message`` with each name the library quotes in backticks (an argument or config field, e.g. `ipc`,
    `label_top_k`) as the running command's flag for it (``--ipc``, ``--label-top-k``); other names unquoted."""
    ctx = click.get_current_context(silent=True)
    flags = (
        {p.name: max(p.opts, key=len) for p in ctx.command.params if isinstance(p, click.Option)}
        if ctx is not None
        else {}
    )
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(1)), message)


def fail(error: Exception) -> None:
    """Exit with ``error`` on one line (exit status 1), in the command's flags (:func:`in_flags`) and printable (an
    error may quote an archive's own strings)."""
    raise click.ClickException(safe_text(in_flags(" ".join(str(error).split())), 2000))


class OptionValueError(click.BadParameter):
    """An option value out of its range: one line, exit status 1 (as every other refusal of ``d3``)."""

    exit_code = 1

    def show(self, file=None) -> None:
        hint = (
            f" (d3 {self.ctx.command.name} -h lists the options)" if self.ctx is not None and self.ctx.command else ""
        )
        click.echo(f"Error: {safe_text(self.format_message(), 500)}{hint}", file=file, err=True)


class PositiveFinite(click.ParamType):
    """A float that is finite and above ``low`` (``inf`` and ``nan`` refused), at most ``high``."""

    name = "number"

    def __init__(self, low: float = 0.0, high: float = float("inf"), inclusive: bool = False):
        self.low, self.high, self.inclusive = low, high, inclusive

    def fail(self, message, param=None, ctx=None):
        raise OptionValueError(message, ctx=ctx, param=param)

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{safe_text(value, 40)} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        above = number >= self.low if self.inclusive else number > self.low
        if not above or number > self.high:
            bound = "at least" if self.inclusive else "above"
            limit = f" and at most {self.high:g}" if math.isfinite(self.high) else ""
            self.fail(f"{value} must be {bound} {self.low:g}{limit}", param, ctx)
        return number

    def __repr__(self) -> str:
        return "NUMBER"


class LabellerWidth(click.ParamType):
    """A labeller's width: an integer from 1 to 4096, or ``auto`` (d3codec.encode.labelled.auto_width's rule)."""

    name = "WIDTH|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            width = int(value)
        except ValueError:
            width = 0
        if not 1 <= width <= 4096:
            self.fail(f"{value!r} is not a width from 1 to 4096 or 'auto'", param, ctx)
        return width


class Count(click.IntRange):
    """An integer in [low, high], refused in one line (OptionValueError) before any work."""

    def fail(self, message, param=None, ctx=None):
        raise OptionValueError(safe_text(message, 300), ctx=ctx, param=param)


def count(low: int | None = 1, high: int | None = None) -> click.IntRange:
    """An integer option's range (click refuses values outside it before any work)."""
    return Count(low, high)


def decode_limit_options(command):
    """--max-bytes, --max-parameters, --max-macs-per-image, --max-macs, --max-replay-macs, --max-section-bytes:
    the decode budget (d3codec.format.limits)."""
    from d3codec.format.limits import DEFAULT_LIMITS as L

    command = click.option(
        "--max-section-bytes",
        type=count(),
        help=f"Decode limit: the decoded size of any one section [default: {L.max_section_bytes}].",
    )(command)
    command = click.option(
        "--max-replay-macs",
        type=count(),
        help=f"Decode limit: multiply-adds of replaying a bptt archive's schedule once [default: {L.max_replay_macs}].",
    )(command)
    command = click.option(
        "--max-macs", type=count(), help=f"Decode limit: multiply-adds of the whole draw [default: {L.max_macs}]."
    )(command)
    command = click.option(
        "--max-macs-per-image",
        type=count(),
        help=f"Decode limit: multiply-adds to decode one "
        f"image [default: {L.max_macs_per_image}]; raise it only for an archive you trust.",
    )(command)
    command = click.option(
        "--max-parameters",
        type=count(),
        help=f"Decode limit: values of the archive's networks and tables once decoded [default: {L.max_parameters}].",
    )(command)
    return click.option(
        "--max-bytes",
        type=count(),
        help=f"Decode limit: bytes the decoded images, labels and soft labels may take [default: {L.max_bytes}].",
    )(command)


# the parameters decode_limit_options adds, as decode_limits takes them
LIMIT_FIELDS = ("max_bytes", "max_parameters", "max_macs_per_image", "max_section_bytes", "max_macs", "max_replay_macs")


def decode_limits(**values):
    """The decode limits (d3codec.format.limits.DecodeLimits) with the given LIMIT_FIELDS (None: the default)."""
    from d3codec.format.limits import DEFAULT_LIMITS

    return DEFAULT_LIMITS.with_overrides(**values)
