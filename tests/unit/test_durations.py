"""systemd time spans and sizes, as the CLI parses them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ralph_systemd.durations import format_duration, format_size, parse_duration, parse_percent, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("5min", 300), ("1h 30min", 5400), ("1h30min", 5400), ("500ms", 0.5),
    ("1.5h", 5400), ("2d", 172800), ("1w", 604800), ("250us", 250e-6), (" 10 sec ", 10), ("1h30", 3630),
    ("3 hours 2 minutes", 3 * 3600 + 120), (".5s", 0.5), ("0", 0),
])
def test_systemd_time_spans(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "   ", "abc", "5mins", "1x", "-5", "1..2", "1.2.3", "h", "5 m i n",
                                  "infinity", "1h-30min", "1e3"])
def test_garbage_is_rejected_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    assert "time span" in str(e.value) and "\n" not in str(e.value)
    assert "90s" in str(e.value) or "too large" in str(e.value)


def test_infinity_only_where_allowed() -> None:
    assert parse_duration("infinity", allow_infinity=True) == math.inf


@given(h=st.integers(0, 1000), m=st.integers(0, 59), s=st.integers(0, 59), ms=st.integers(0, 999),
       sep=st.sampled_from(["", " ", "  "]))
def test_components_add_up(h: int, m: int, s: int, ms: int, sep: str) -> None:
    text = sep.join([f"{h}h", f"{m}min", f"{s}s", f"{ms}ms"])
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        v = parse_duration(text)
    except ValueError:
        return
    assert v >= 0 and math.isfinite(v)


@pytest.mark.parametrize("text, n", [("100", 100), ("1K", 1024), ("512M", 512 * 1024**2), ("2G", 2 * 1024**3),
                                     ("1.5G", int(1.5 * 1024**3)), ("1T", 1024**4), ("64B", 64)])
def test_sizes_are_1024_based(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "abc", "0", "2g", "1Q", "-1M", "1 2M", "10%"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@given(st.integers(1, 2**40), st.sampled_from(["", "K", "M", "G"]))
def test_size_multiplies(n: int, suffix: str) -> None:
    want = n * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[suffix]
    if want > 2**64 - 2:  # systemd's uint64 "infinity" is 2^64 - 1: larger sizes are refused, not wrapped
        with pytest.raises(ValueError, match="too large"):
            parse_size(f"{n}{suffix}")
    else:
        assert parse_size(f"{n}{suffix}") == want


@pytest.mark.parametrize("text", ["16E", "99999999999999999999999", "16384P", "18446744073709551615"])
def test_sizes_of_2_64_or_more_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="too large.*leave the option out"):
        parse_size(text)
    assert parse_size("18446744073709551614") == 2**64 - 2


def test_huge_cpu_quota_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"more than 100000% \(1000 CPUs\)"):
        parse_percent("1e30%")


@pytest.mark.parametrize("text, pct", [("50%", 50), ("50", 50), ("200%", 200), ("12.5%", 12.5)])
def test_cpu_quota(text: str, pct: float) -> None:
    assert parse_percent(text) == pct


@pytest.mark.parametrize("text", ["", "%", "fast", "0%", "-5%", "nan", "inf"])
def test_bad_cpu_quota(text: str) -> None:
    with pytest.raises(ValueError, match="CPU quota"):
        parse_percent(text)


def test_formatting() -> None:
    assert format_duration(None) == "-"
    assert format_duration(0.25) == "250ms"
    assert format_duration(2.34) == "2.3s"
    assert format_duration(298) == "4min 58s"
    assert format_duration(5400) == "1h 30min"
    assert format_size(None) == "-"
    assert format_size(12 * 1024**2 + 300 * 1024) == "12.3M"
