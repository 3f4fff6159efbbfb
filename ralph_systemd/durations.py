"""Time spans, sizes and CPU quotas as systemd writes them, for the command line.

parse_duration follows systemd.time(7): "90", "90s", "5min", "1h 30min", "1.5h", "500ms", "infinity";
a bare number is seconds. parse_size follows systemd's 1024-based sizes ("512M", "2G", "1.5G").
Each raises ValueError with a message that says what was wrong and what is accepted.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

S_PER_US = 1e-6  # one microsecond, in seconds
MAX_LIMIT = 2**64 - 2  # systemd's uint64 limits: 2^64 - 1 means "infinity"
MAX_CPU_PERCENT = 100_000.0  # a thousand CPUs
_MINUTE = 60.0
_HOUR = 3600.0
_DAY = 86400.0
#: systemd.time(7): a month is 30.44 days, a year 365.25 days.
_UNITS: dict[str, float] = {
    "us": S_PER_US, "usec": S_PER_US, "µs": S_PER_US, "μs": S_PER_US,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": _MINUTE, "min": _MINUTE, "minute": _MINUTE, "minutes": _MINUTE,
    "h": _HOUR, "hr": _HOUR, "hour": _HOUR, "hours": _HOUR,
    "d": _DAY, "day": _DAY, "days": _DAY,
    "w": 7 * _DAY, "week": 7 * _DAY, "weeks": 7 * _DAY,
    "M": 2629800.0, "month": 2629800.0, "months": 2629800.0,
    "y": 31557600.0, "year": 31557600.0, "years": 31557600.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([^\d\s.]*)(\s*)")
DURATION_HELP = "a time span like 90, 90s, 500ms, 5min, 1h 30min or 2d (a bare number is seconds)"


def parse_duration(text: str, *, allow_infinity: bool = False) -> float:
    """Seconds in a systemd time span; math.inf for "infinity" when allowed."""
    s = text.strip()
    if allow_infinity and s == "infinity":
        return math.inf
    if not s:
        raise ValueError(f"empty time span: give {DURATION_HELP}")
    if s.startswith("-"):
        raise ValueError(f"time span {text!r} is negative: give {DURATION_HELP}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"{text!r} is not a time span: give {DURATION_HELP}")
        number, unit, space = m.groups()
        if unit == "" and not space and m.end() < len(s):  # "1..2", "1.5.3"
            raise ValueError(f"{text!r} is not a time span: give {DURATION_HELP}")
        if unit not in _UNITS and unit != "":
            raise ValueError(f"{text!r} has an unknown time unit {unit!r}: give {DURATION_HELP}")
        total += float(number) * _UNITS.get(unit, 1.0)
        pos = m.end()
    if not math.isfinite(total):
        raise ValueError(f"time span {text!r} is too large")
    return total


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5, "E": 1024**6}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]?)\s*")
SIZE_HELP = "a size in bytes with an optional 1024-based suffix K, M, G or T (e.g. 512M, 2G)"


def parse_size(text: str) -> int:
    """Bytes in a systemd size ("512M" = 512 * 1024**2); ValueError for garbage or zero."""
    if text.strip().startswith("-"):
        raise ValueError(f"size {text!r} is negative: give {SIZE_HELP}")
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a size: give {SIZE_HELP}")
    number, unit = m.groups()
    if unit.upper() not in _SIZE_UNITS or (unit.islower() and unit != "k"):
        raise ValueError(f"{text!r} has an unknown size suffix {unit!r}: give {SIZE_HELP}")
    value = int(Fraction(number) * _SIZE_UNITS[unit.upper()])  # exact: no float rounding of big sizes
    if value <= 0:
        raise ValueError(f"size {text!r} is zero: give {SIZE_HELP}")
    if value > MAX_LIMIT:
        raise ValueError(f"size {text!r} is too large: systemd takes at most {MAX_LIMIT} bytes (just under 16E); "
                         "leave the option out for no limit")
    return value


def parse_count(text: str) -> int:
    """A positive whole number below systemd's uint64 "infinity" (a task limit, a line count)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive whole number")
    if value > MAX_LIMIT:
        raise ValueError(f"{text!r} is too large: at most {MAX_LIMIT}; leave the option out for no limit")
    return value


def parse_percent(text: str) -> float:
    """A CPU quota in percent of one CPU: "50%", "50" or "200%" (two CPUs)."""
    s = text.strip().removesuffix("%").strip()
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a CPU quota: give a percentage of one CPU like 50% or 200%") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"CPU quota {text!r} must be a positive percentage like 50% or 200%")
    if value > MAX_CPU_PERCENT:
        raise ValueError(f"CPU quota {text!r} is more than {MAX_CPU_PERCENT:.0f}% ({MAX_CPU_PERCENT / 100:.0f} CPUs): "
                         "give a percentage of one CPU like 50%, or 200% for two CPUs")
    return value


def format_duration(seconds: float | None) -> str:
    """A short human span in systemd's style: "4min 58s", "1h 30min", "2.3s", "850ms"; "-" for None."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "infinity"
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    parts = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts[:2])


def format_size(n: int | None) -> str:
    """Bytes in 1024-based units with one decimal: "12.3M"; "-" for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover
