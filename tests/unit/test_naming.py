"""Unit names from ticket ids: every input is a valid, unique `ralph-*.scope` name or a clear ValueError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ralph_systemd.naming import (
    check_ticket_fits,
    escape,
    find_project_root,
    is_unit_name_of_ours,
    log_file_name,
    parse_log_file_name,
    parse_unit_name,
    project_key,
    unescape,
    unit_name_for_ticket,
)

VALID_UNIT = re.compile(r"ralph-[0-9a-f]{8}-[A-Za-z0-9:_.\\-]+\.scope")
KEY = "0123abcd"


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
    assert (parse_unit_name(name) or ('', None))[1] == ticket


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
    # expected values are what `systemd-escape` (252) prints for these inputs, after the project key
    name = unit_name_for_ticket(ticket, KEY)
    assert name == expected.replace("ralph-", f"ralph-{KEY}-", 1)
    assert parse_unit_name(name) == (KEY, ticket)


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


@pytest.mark.parametrize("name", ["ralph-x.scope", "ralph-../x.scope", "ralph-*.scope", "ralph-0123abcd-.scope",
                                  "ralph-0123ABCD-x.scope", "ralph-0123abcd-a\\x2.scope", "ralph-0123abcd-\\xff.scope",
                                  "ralph-0123abcd-\\x61.scope", "foo.scope"])
def test_names_we_never_make_do_not_parse(name: str) -> None:
    assert parse_unit_name(name) is None and (parse_unit_name(name) or ('', None))[1] is None


def test_names_of_ours_old_and_new() -> None:
    assert is_unit_name_of_ours(unit_name_for_ticket("T-1", KEY))
    assert is_unit_name_of_ours(r"ralph-T\x2d1.scope")  # made before project keys: still addressable
    for bad in ("ralph-../x.scope", "ralph-*.scope", "ralph-.scope", "ralph-x y.scope", "ralph-x.service"):
        assert not is_unit_name_of_ours(bad)


def test_two_projects_same_ticket_two_units() -> None:
    assert unit_name_for_ticket("T-1", "aaaaaaaa") != unit_name_for_ticket("T-1", "bbbbbbbb")
    with pytest.raises(ValueError, match="project key"):
        unit_name_for_ticket("T-1", "not-a-key")


@settings(max_examples=500)
@given(st.text(min_size=1, max_size=40), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True))
def test_log_file_names_parse_back_exactly(ticket: str, session: str) -> None:
    try:
        unit_name_for_ticket(ticket, KEY)
    except ValueError:
        return
    assert parse_log_file_name(log_file_name(ticket, session, KEY)) == (KEY, ticket, session)


def test_a_ticket_that_is_a_prefix_of_another_has_a_different_log_name() -> None:
    # `logs abc` once printed abc.def's log: the names must not be prefixes of each other's patterns
    a, b = log_file_name("abc", "s1", KEY), log_file_name("abc.def", "s1", KEY)
    assert parse_log_file_name(a) == (KEY, "abc", "s1") and parse_log_file_name(b) == (KEY, "abc.def", "s1")


def test_the_ticket_limit_counts_the_log_file_name_and_says_the_real_limit() -> None:
    session = "0123456789abcdef"
    limit = 255 - len(f"{KEY}.@{session}.log")
    check_ticket_fits("x" * limit, session)
    assert len(log_file_name("x" * limit, session, KEY)) == 255
    with pytest.raises(ValueError, match=f"allows {limit}"):
        check_ticket_fits("x" * (limit + 1), session)
    with pytest.raises(ValueError, match="allows 234"):  # a one-character session: the unit name is tighter
        check_ticket_fits("x" * 235, "s")
    assert len(unit_name_for_ticket("x" * 234, KEY)) == 255


def test_project_root_is_the_repository_for_every_worktree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git" / "worktrees" / "wt1").mkdir(parents=True)
    (repo / "sub" / "dir").mkdir(parents=True)
    wt = tmp_path / "elsewhere" / "wt1"
    (wt / "deep").mkdir(parents=True)
    (wt / ".git").write_text(f"gitdir: {repo}/.git/worktrees/wt1\n")
    (repo / ".git" / "worktrees" / "wt1" / "commondir").write_text("../..\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert find_project_root(repo / "sub" / "dir") == repo
    assert find_project_root(wt / "deep") == repo
    assert project_key(wt) == project_key(repo / "sub") == project_key(repo)
    assert find_project_root(plain) == plain and project_key(plain) != project_key(repo)
    link = tmp_path / "link"
    link.symlink_to(repo)
    assert project_key(link) == project_key(repo)  # the real path counts
