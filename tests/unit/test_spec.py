"""DispatchSpec refuses bad input at construction, with a message that names the problem."""

from __future__ import annotations

import math

import pytest

from ralph_systemd import DispatchSpec


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
])
def test_bad_input_is_refused_with_a_clear_message(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make(**kw)


def test_defaults() -> None:
    s = make()
    assert s.unit == r"ralph-T\x2d1.scope"
    assert s.session and len(s.session) == 16
    assert s.eof_grace == 2.0 and s.grace == 10.0
    assert make(grace=2).eof_grace == 0.5
    assert s.describe().startswith(f"ralph ticket=T-1 session={s.session}: true")
