"""Text from an archive, made safe to print: no control characters, no unbounded lengths.

An archive's metadata is attacker-controlled. Printed raw, a string could move the cursor, clear the
screen or set a terminal's title (escape sequences), reorder what follows (bidirectional controls),
or fill a log with megabytes. Everything d3codec prints from an archive (``d3 info``, ``d3 verify``,
error messages) goes through :func:`safe_text` or :func:`safe_value`.
"""

from __future__ import annotations

from typing import Any

MAX_TEXT = 200  # characters of one string shown before it is cut
MAX_ITEMS = 20  # items of a list shown before the rest are summarised


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def safe_text(value: Any, limit: int = MAX_TEXT) -> str:
    """``str(value)`` with every non-printable character escaped (``\\x1b``, ``\\u202e``, ...) and cut
    after ``limit`` characters, saying how long it was: ``"aaaa… (15728640 characters)"``.

    Printable means Python's ``str.isprintable`` (no C0/C1 controls, no format or separator
    characters such as bidirectional overrides), except that a plain space is kept.
    """
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    shown = text[:limit] if cut else text
    out = "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in shown)
    return f"{out}… ({len(text)} characters)" if cut else out


def safe_value(value: Any, limit: int = MAX_TEXT, items: int = MAX_ITEMS, depth: int = 0) -> Any:
    """A copy of a JSON value fit for display: strings (keys too) through :func:`safe_text`, lists
    longer than ``items`` cut to their first ``items`` entries plus a note of how many there were,
    nesting below 8 levels replaced by a note."""
    if depth > 8:
        return "… (nested deeper)"
    if isinstance(value, str):
        return safe_text(value, limit)
    if isinstance(value, dict):
        shown = list(value.items())
        out = {safe_text(k, limit): safe_value(v, limit, items, depth + 1) for k, v in shown[: items * 5]}
        if len(shown) > items * 5:
            out["…"] = f"{len(shown) - items * 5} more keys"
        return out
    if isinstance(value, list):
        entries = [safe_value(v, limit, items, depth + 1) for v in value[:items]]
        if len(value) > items:
            entries.append(f"… ({len(value)} items in all)")
        return entries
    return value
