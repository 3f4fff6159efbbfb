"""DispatchSpec refuses bad input at construction, with a message that names the problem."""

from __future__ import annotations

import math

import pytest

from ralph_systemd import DispatchSpec
from ralph_systemd.naming import project_key
from ralph_systemd.scope import facts_from_unit


def make(**kw: object) -> DispatchSpec:
    base: dict[str, object] = dict(argv=["true"], ticket="T-1")
    base.update(kw)
    return DispatchSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, words", [
    (dict(argv="pi -p x"), "list of strings"),
    (dict(argv=[]), "argv is empty"),
    (dict(argv=["a\0b"]), "NUL"),
    (dict(env={"A": "x\0y"}), "NUL"),
    (dict(env={"A=B": "x"}), "env name"),
    (dict(timeout=-1), "timeout must be > 0"),
    (dict(timeout=0), "timeout must be > 0"),
    (dict(timeout=math.nan), "NaN"),
    (dict(timeout=math.inf), "infinite"),
    (dict(timeout=1e12), "over ten years"),
    (dict(timeout="10"), "number of seconds"),
    (dict(idle_timeout=-5), "idle_timeout"),
    (dict(grace=0), "grace must be > 0"),
    (dict(grace=2, eof_grace=3), "eof_grace"),
    (dict(memory_max=-1), "memory_max"),
    (dict(tasks_max=0), "tasks_max"),
    (dict(session="bad session"), "session id"),
    (dict(ticket=""), "ticket id is empty"),
    (dict(slice="ralph"), "slice"),
    (dict(stdin="tty"), "stdin 'tty' is not a policy"),
    (dict(stdin=3), "stdin must be 'null', 'pipe', bytes or a path"),
    (dict(stdin="null", eof_grace=1), "eof_grace .* applies only with stdin='pipe'"),
    (dict(unset_env="CLAUDECODE"), "unset_env must be a list"),
    (dict(unset_env=["A=B"]), "not a variable name"),
])
def test_bad_input_is_refused_with_a_clear_message(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make(**kw)


def test_defaults() -> None:
    s = make()
    assert s.unit == rf"ralph-{s.project}-T\x2d1.scope" and s.project == project_key(s.cwd)
    assert s.session and len(s.session) == 16
    assert s.stdin == "null" and s.eof_grace == 0.0 and s.grace == 10.0  # no EOF step without a pipe
    assert make(stdin="pipe").eof_grace == 2.0 and make(grace=2, stdin="pipe").eof_grace == 0.5
    assert s.describe() == f"ralph ticket=T-1 session={s.session} project={s.project_root}: true"


def test_description_escapes_control_characters_and_parses_back() -> None:
    argv = ["sh", "-c", "printf '\x1b]0;pwned\x07\x1b[2J'\nFAKE-T active rm -rf ~", "\u202e"]
    s = make(argv=argv, ticket="T:\u202e1", cwd="/tmp")
    desc = s.describe()
    assert desc.isprintable(), desc
    assert "\\x1b]0;pwned\\x07" in desc and "\\n" in desc and "\\u202e" in desc
    facts = facts_from_unit(s.unit, desc, ("file:///l%20og",))
    assert facts is not None
    assert (facts.ticket, facts.session, facts.project, facts.log_path) == ("T:\u202e1", s.session, s.project,
                                                                           "/l og")
    assert facts.command is not None and facts.command.startswith("sh -c printf") and facts.command.isprintable()


def test_an_explicit_project_key_names_the_unit() -> None:
    s = make(project="0123abcd")
    assert s.unit == r"ralph-0123abcd-T\x2d1.scope" and s.project_root is None


@pytest.mark.parametrize("kw, words", [
    (dict(memory_max=2**64 - 1), "too large"),
    (dict(tasks_max=2**70), "too large"),
    (dict(cpu_quota=1e30), "percentage of one CPU"),
    (dict(ticket="x" * 226), "log file name .* allows 225"),
    (dict(project="XYZ"), "project key"),
])
def test_limits_and_lengths(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make(**kw)


def test_stdin_policies_and_their_labels(tmp_path: object) -> None:
    from pathlib import Path
    assert isinstance(tmp_path, Path)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hi")
    assert (make().stdin, make().stdin_label, make().stdin_kind) == ("null", "null", "null")
    s = make(stdin=bytearray(b"abc"))
    assert s.stdin == b"abc" and s.stdin_label == "input (3 bytes)" and s.stdin_kind == "input"
    f = make(stdin=prompt)
    assert f.stdin == prompt and f.stdin_label == f"file {prompt}" and f.stdin_kind == "file"
    with pytest.raises(ValueError, match="No such file"):
        make(stdin=tmp_path / "missing")


def test_unset_env_removes_names_from_the_inherited_or_given_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDECODE", "1")
    assert "CLAUDECODE" in make().environment
    assert "CLAUDECODE" not in make(unset_env=["CLAUDECODE"]).environment
    assert make(env={"A": "1", "B": "2"}, unset_env=["A", "NOT_SET"]).environment == {"B": "2"}
