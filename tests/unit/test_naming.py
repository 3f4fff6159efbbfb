"""Unit names from ticket ids: every input is a valid, unique `ralph-*.scope` name or a clear ValueError."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ralph_systemd.naming import escape, ticket_from_unit_name, unescape, unit_name_for_ticket

VALID_UNIT = re.compile(r"ralph-[A-Za-z0-9:_.\\-]+\.scope")


@settings(max_examples=3000)
@given(st.text(min_size=0, max_size=300))
def test_every_ticket_is_a_valid_name_or_a_clear_error(ticket: str) -> None:
    try:
        name = unit_name_for_ticket(ticket)
    except ValueError as e:
        assert str(e) and "ticket id" in str(e)
        return
    assert VALID_UNIT.fullmatch(name), name
    assert len(name) <= 255
    assert ticket_from_unit_name(name) == ticket


@settings(max_examples=2000)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_distinct_tickets_give_distinct_names(a: str, b: str) -> None:
    try:
        na, nb = unit_name_for_ticket(a), unit_name_for_ticket(b)
    except ValueError:
        return
    assert (na == nb) == (a == b)


@pytest.mark.parametrize("ticket, expected", [
    ("abc-123", r"ralph-abc\x2d123.scope"),
    ("a/b", "ralph-a-b.scope"),
    (".hidden", r"ralph-\x2ehidden.scope"),
    ("x.service", "ralph-x.service.scope"),
    ("ünï", r"ralph-\xc3\xbcn\xc3\xaf.scope"),
    ("a b", r"ralph-a\x20b.scope"),
])
def test_escaping_matches_systemd_escape(ticket: str, expected: str) -> None:
    # expected values are what `systemd-escape` (252) prints for these inputs
    assert unit_name_for_ticket(ticket) == expected


@pytest.mark.parametrize("bad, words", [
    ("", "empty"),
    ("a\0b", "control character"),
    ("a\nb", "control character"),
    (" padded", "whitespace"),
    ("x" * 300, "too long"),
])
def test_bad_tickets_say_what_is_wrong(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        unit_name_for_ticket(bad)


def test_escape_round_trips() -> None:
    for s in ["plain", "with-dash", "sl/ash", "back\\slash", "ütf"]:
        assert unescape(escape(s)) == s
