"""The benchmark's pure side: samples -> medians/p90/ratios, the targets, the table, and small parsers.

Nothing here touches the system, so it is unit-tested (tests/unit/test_bench_stats.py). The figures are
printed, never asserted: a shared 2-core machine is too noisy for a timing test that cannot flake.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# cgroup2 options that belong to the superblock (mount(2) data), as the kernel shows them in /proc/mounts
CGROUP2_FS_OPTIONS = ("nsdelegate", "favordynmods", "memory_localevents", "memory_recursiveprot",
                      "memory_hugetlb_accounting", "pids_localevents")


@dataclass(frozen=True)
class Summary:
    """Milliseconds: median, p90 (nearest rank), min and max over n samples."""

    n: int
    median: float
    p90: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def quantile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]) of a non-empty sequence: an observed value, never interpolated."""
    if not xs:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    s = sorted(xs)
    rank = max(1, math.ceil(q * len(s)))
    return s[rank - 1]


def summarize(samples_ms: Iterable[float]) -> Summary | None:
    """Summary of the finite samples (NaN = not measured, dropped); None when there are none."""
    xs = [x for x in samples_ms if math.isfinite(x)]
    if not xs:
        return None
    return Summary(n=len(xs), median=statistics.median(xs), p90=quantile(xs, 0.9), min=min(xs), max=max(xs))


def ratio(a: Summary | None, b: Summary | None) -> float | None:
    """a.median / b.median, or None when either is missing or b is zero."""
    if a is None or b is None or b.median <= 0:
        return None
    return a.median / b.median


# -- targets (reported against, never asserted) ------------------------------------------------------------


@dataclass(frozen=True)
class TargetLine:
    what: str
    met: bool | None  # None: not measured in this run
    detail: str

    def render(self) -> str:
        word = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"  {self.what}: {word} ({self.detail})"


def _med(s: Summary | None) -> float | None:
    return None if s is None else s.median


def _fmt(x: float | None, unit: str = " ms") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def launch_targets(ralph: Summary | None, floor: Summary | None, systemd_run: Summary | None) -> list[TargetLine]:
    """launch <= floor + 1.5 ms, and >= 3x faster than systemd-run (medians of the same run and regime)."""
    over = None if ralph is None or floor is None else ralph.median - floor.median
    speed = ratio(systemd_run, ralph)
    return [
        TargetLine("launch <= manager floor + 1.5 ms", None if over is None else over <= 1.5,
                   f"ralph {_fmt(_med(ralph))}, floor {_fmt(_med(floor))}, "
                   f"overhead {_fmt(over)}"),
        TargetLine(">= 3x faster than systemd-run --user --scope", None if speed is None else speed >= 3.0,
                   "n/a" if speed is None else f"{speed:.2f}x"),
    ]


def completion_targets(long_session: Summary | None, immediate: Summary | None,
                       notify_floor: Summary | None) -> list[TargetLine]:
    """completion <= 5 ms for a session that lived >= 50 ms; <= notification floor + 2 ms for one that
    exited at once."""
    bound = None if notify_floor is None else notify_floor.median + 2.0
    return [
        TargetLine("completion <= 5 ms (session lived 50 ms)",
                   None if long_session is None else long_session.median <= 5.0,
                   _fmt(_med(long_session))),
        TargetLine("completion <= notification floor + 2 ms (session exited at once)",
                   None if immediate is None or bound is None else immediate.median <= bound,
                   f"ralph {_fmt(_med(immediate))}, floor {_fmt(_med(notify_floor))}"),
    ]


def fanout_target(n: int, all_running_s: float | None) -> TargetLine:
    ok = None if all_running_s is None or n < 256 else all_running_s <= 1.5
    return TargetLine("256 dispatches running in their scopes in <= 1.5 s", ok,
                      "n/a" if all_running_s is None else f"{n} in {all_running_s:.2f} s")


def waiting_targets(core_share: float | None, rss_mb: float | None, n: int) -> list[TargetLine]:
    return [
        TargetLine(f"caller-thread CPU < 1% of a core while {n} sessions sleep",
                   None if core_share is None or n < 256 else core_share < 0.01,
                   "n/a" if core_share is None else f"{core_share * 100:.3f}%"),
        TargetLine("supervisor RSS < 60 MB", None if rss_mb is None else rss_mb < 60.0, _fmt(rss_mb, " MB")),
    ]


# -- the table -------------------------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    def line(r: Sequence[str]) -> str:
        cells = [str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)]
        return "  ".join(cells).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def cell(s: Summary | None) -> str:
    """'median / p90' in ms, or '-'."""
    return "-" if s is None else f"{s.median:.2f} / {s.p90:.2f}"


def summaries_to_json(groups: Mapping[str, Mapping[str, Summary | None]]) -> dict[str, Any]:
    return {g: {k: (None if s is None else s.as_dict()) for k, s in m.items()} for g, m in groups.items()}


# -- parsers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


def _unescape_mount_field(s: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \040 \011 \012 \134
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        s = s.replace(code, ch)
    return s


def parse_mounts(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        out.append(Mount(_unescape_mount_field(f[0]), _unescape_mount_field(f[1]), f[2], tuple(f[3].split(","))))
    return out


def cgroup2_mount(mounts_text: str) -> Mount | None:
    """The cgroup2 mount (the last one listed, as the kernel resolves stacking), or None on a v1-only host."""
    found = [m for m in parse_mounts(mounts_text) if m.fstype == "cgroup2"]
    return found[-1] if found else None


def favordynmods_on(mounts_text: str) -> bool | None:
    """Whether the cgroup2 hierarchy is mounted with favordynmods; None when there is no cgroup2 mount."""
    m = cgroup2_mount(mounts_text)
    return None if m is None else "favordynmods" in m.options


def unified_cgroup(proc_cgroup_text: str) -> str | None:
    """The cgroup2 path ('0::' line) from /proc/PID/cgroup text, or None."""
    for line in proc_cgroup_text.splitlines():
        if line.startswith("0::"):
            return line[3:] or None
    return None


def in_unit(proc_cgroup_text: str, unit: str) -> bool:
    """Whether /proc/PID/cgroup text puts the process in the cgroup of `unit` (or one below it)."""
    path = unified_cgroup(proc_cgroup_text)
    return path is not None and f"/{unit}/" in path + "/"
