"""Text that came from outside (prompts, corpora, files, paths, model names, results directories).

Such text is printed in the CLI and shown in the app, so it must never reach a terminal as is:
an escape sequence in a prompt (``\\x1b[2J``, ``\\x1b]0;title\\x07``) would clear or retitle the
reader's terminal, and Rich markup in a path (``[/]``) would break or restyle the output.

``visible`` turns every control character (C0, DEL, C1), the bidirectional overrides and lone
surrogates into a visible escape (``\\x1b``, ``\\u202e``, ``\\ud800``); ``markup_safe`` also escapes
Rich markup, for text that is interpolated into a markup string. Printable text, whitespace-made-visible
glyphs included, is returned unchanged, so normal output does not change.
"""

from __future__ import annotations

import unicodedata

_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029, 0x200E, 0x200F, 0x061C]
_TABLE: dict[int, str] = {}
for _code in [*range(0x00, 0x20), *range(0x7F, 0xA0)]:
    _TABLE[_code] = f"\\x{_code:02x}"
for _code in _BIDI:
    _TABLE[_code] = f"\\u{_code:04x}"
for _code in range(0xD800, 0xE000):  # lone surrogates (JSON can escape one): no terminal can encode them
    _TABLE[_code] = f"\\u{_code:04x}"
_KEEP_WHITESPACE = {ord("\n"): None, ord("\t"): None}


def visible(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every control character escaped (``keep_newlines`` leaves ``\\n`` and ``\\t``)."""
    text = str(text)
    if text.isprintable() and not any(ord(char) in _TABLE for char in text):
        return text  # the common case: nothing to do
    if keep_newlines:
        table = {code: value for code, value in _TABLE.items() if code not in _KEEP_WHITESPACE}
        return text.translate(table)
    return text.translate(_TABLE)


def markup_safe(text: object, keep_newlines: bool = False) -> str:
    """``visible(text)`` with Rich markup escaped: safe inside a string that Rich parses as markup."""
    from rich.markup import escape

    return escape(visible(text, keep_newlines))


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character that ``visible`` escapes."""
    return any(ord(char) in _TABLE or unicodedata.category(char) == "Cc" for char in text)
