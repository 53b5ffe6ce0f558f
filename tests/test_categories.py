"""Token categories (docs/SCIENCE.md section 4) on real tokens of the bundled tokenizer."""

from __future__ import annotations

import pytest
from horizon.core.analyses.truncate.categories import CATEGORIES, COMMON_WORDS, token_category
from horizon.core.model.loader import bundled_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return bundled_tokenizer()


# Raw byte-level BPE vocabulary entries (Ġ = leading space, Ċ = newline) and their category:
# the category must come from the decoded text, never from the raw marker characters.
REAL_TOKENS = [
    ("Ċ", "newline"),
    ("ĊĊ", "newline"),
    ("ĠĊ", "newline"),  # surrounding whitespace allowed
    ("Ċĉ", "newline"),
    (".", "full_stop"),
    ("Ġ.", "full_stop"),
    (",", "comma"),
    ("Ġ,", "comma"),
    ("Ġthe", "common"),
    ("ĠThe", "common"),  # case-insensitive
    ("The", "common"),  # leading space optional
    ("ĠIt", "common"),
    ("Ġtheir", "common"),
    ("Ġwhich", "common"),
    ("ĠI", "common"),
    ("Ġtheory", "alpha"),  # starts like a common word, is not one
    ("ĠcafÃ©", "alpha"),  # " café": non-ASCII letters are letters
    ("Ġtower", "alpha"),
    ("'s", "other"),
    ("...", "other"),
    ("Ġ-", "other"),
    ("Ġ", "other"),  # a lone space is whitespace without a newline
]


@pytest.mark.parametrize(("raw", "expected"), REAL_TOKENS)
def test_real_vocabulary_tokens(tokenizer, raw: str, expected: str) -> None:
    token_id = tokenizer.convert_tokens_to_ids(raw)
    assert token_id is not None and token_id != tokenizer.unk_token_id, raw
    text = tokenizer.decode([token_id])
    assert "Ġ" not in text and "Ċ" not in text  # decoded, not raw
    assert token_category(text) == expected


def test_tokenised_sentence(tokenizer) -> None:
    text = "Paris, France.\n\nThe tower is tall; it was built in 1889 and"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([token_id]) for token_id in ids]
    assert "".join(pieces) == text  # per-token decoding loses nothing
    got = [(piece, token_category(piece)) for piece in pieces]
    expected = {
        "Paris": "alpha", ",": "comma", " France": "alpha", ".": "full_stop", "\n": "newline",
        "The": "common", " tower": "alpha", " is": "common", " tall": "alpha", ";": "other",
        " it": "common", " was": "alpha", " built": "alpha", " in": "common", "1": "other", " and": "common",
    }
    for piece, category in got:
        if piece in expected:
            assert category == expected[piece], piece
    assert {category for _, category in got} <= set(CATEGORIES)
    assert sum(category == "newline" for _, category in got) >= 1


def test_every_common_word_is_common_with_and_without_space() -> None:
    assert len(COMMON_WORDS) == 23
    for word in COMMON_WORDS:
        assert token_category(word) == "common"
        assert token_category(" " + word) == "common"
        assert token_category(" " + word.upper()) == "common"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" \n ", "newline"),  # whitespace around the newline is allowed
        (" . ", "full_stop"),
        ("..", "other"),  # not the single character
        (",\n", "comma"),
        ("  the", "other"),  # only one optional leading space
        ("the ", "other"),  # no trailing space
        (" thE", "common"),
        ("n't", "other"),
        ("abc1", "other"),
        ("", "other"),
        ("\t", "other"),
    ],
)
def test_edge_cases(text: str, expected: str) -> None:
    assert token_category(text) == expected


def test_order_is_newline_first() -> None:
    # "\n" is also whitespace-only: the rule order puts it in newline, never other.
    assert token_category("\n\n\n") == "newline"
