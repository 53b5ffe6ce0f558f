"""Token categories of the truncation error analysis (docs/SCIENCE.md section 4, seed 003).

Categories are decided on the *decoded* token text (byte-level BPE markers such as the
leading-space symbol already turned into a real space), checked in this order:

- ``newline``, ``full_stop``, ``comma``: the token is that character, surrounding whitespace allowed;
- ``common``: one of the seed's hand-made list of common words, case-insensitive, optional leading space;
- ``alpha``: letters only, optional leading space;
- ``other``: the rest.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = ("newline", "full_stop", "comma", "common", "alpha", "other")

# The seed's list, verbatim (footnote 4 of seed 003).
COMMON_WORDS: frozenset[str] = frozenset(
    "and of or in to that which with for the a an they on is their but are its i we it at".split()
)


def _without_leading_space(text: str) -> str:
    # "Optional leading space" means one space, the word-boundary marker of byte-level BPE.
    return text[1:] if text.startswith(" ") else text


def token_category(text: str) -> str:
    """The category of one decoded token text (see the module docstring for the rules)."""
    stripped = text.strip()
    if "\n" in text and not stripped:
        return "newline"
    if stripped == ".":
        return "full_stop"
    if stripped == ",":
        return "comma"
    word = _without_leading_space(text)
    if word.lower() in COMMON_WORDS:
        return "common"
    if word.isalpha():
        return "alpha"
    return "other"
