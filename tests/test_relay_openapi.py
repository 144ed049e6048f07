"""The OpenAPI document's patterns say what the validators do (one rule, stated once)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from forwarder.config import is_valid_slug
from forwarder.relay_openapi import SLUG_PATTERN, TEXT_PATTERN
from forwarder.schemas import MAX_TEXT, text_value


def _ecma(pattern: str) -> re.Pattern[str]:
    """The pattern as JSON Schema reads it: ``$`` is the very end (Python's ``$``
    also matches before a final newline)."""
    assert pattern.endswith("$")
    return re.compile(pattern[:-1] + r"\Z")


_ALPHABET = (st.characters(min_codepoint=0, max_codepoint=0x2FF)
             | st.sampled_from(".-_ \t\n\x85\xa0"))


def _text_ok(value: str) -> bool:
    try:
        text_value(value)
    except ValidationError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.text(_ALPHABET, max_size=20))
def test_text_pattern_matches_the_text_rule(value: str) -> None:
    in_pattern = bool(_ecma(TEXT_PATTERN).search(value)) and 1 <= len(value) <= MAX_TEXT
    assert in_pattern == _text_ok(value), repr(value)


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from("aZ9._-/ %é") , max_size=6) | st.sampled_from([".", "..", "..."]))
def test_slug_pattern_matches_the_slug_rule(value: str) -> None:
    assert bool(_ecma(SLUG_PATTERN).search(value)) == is_valid_slug(value), repr(value)
