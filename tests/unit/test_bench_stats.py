"""The benchmark's pure side: statistics, targets, the table, and the /proc parsers behind favordynmods."""

from __future__ import annotations


import pytest

from bench.host import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME, remount_args
from bench.stats import (
    Mount,
    Summary,
    cgroup2_mount,
    completion_targets,
    fanout_target,
    favordynmods_on,
    in_unit,
    launch_targets,
    parse_mounts,
    quantile,
    ratio,
    render_table,
    summarize,
    waiting_targets,
)

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,favordynmods 0 0
"""


def S(median: float, p90: float | None = None) -> Summary:
    return Summary(n=10, median=median, p90=p90 if p90 is not None else median, min=median, max=median)


def test_quantile_is_nearest_rank_and_an_observed_value() -> None:
    xs = [float(x) for x in range(1, 11)]  # 1..10
    assert quantile(xs, 0.9) == 9.0
    assert quantile(xs, 0.5) == 5.0
    assert quantile(xs, 0.0) == 1.0
    assert quantile(xs, 1.0) == 10.0
    assert quantile([3.0, 1.0, 2.0], 0.9) == 3.0  # unsorted input
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_summarize_drops_unmeasured_samples() -> None:
    s = summarize([4.0, float("nan"), 2.0, 3.0, float("inf")])
    assert s is not None
    assert (s.n, s.median, s.min, s.max) == (3, 3.0, 2.0, 4.0)
    assert summarize([float("nan")]) is None
    assert summarize([]) is None


def test_ratio_of_medians() -> None:
    assert ratio(S(30.0), S(10.0)) == 3.0
    assert ratio(None, S(1.0)) is None
    assert ratio(S(1.0), S(0.0)) is None


def test_launch_targets_use_floor_plus_and_speedup() -> None:
    met = launch_targets(S(4.5), S(3.2), S(14.0))
    assert [t.met for t in met] == [True, True]  # 1.3 ms over the floor; 3.1x
    missed = launch_targets(S(12.0), S(3.2), S(13.0))
    assert [t.met for t in missed] == [False, False]
    assert "overhead 8.80 ms" in missed[0].render() and "NOT met" in missed[0].render()
    assert [t.met for t in launch_targets(S(4.0), None, None)] == [None, None]


def test_completion_targets() -> None:
    t = completion_targets(S(4.9), S(13.0), S(11.5))
    assert [x.met for x in t] == [True, True]
    t = completion_targets(S(9.0), S(24.0), S(11.5))
    assert [x.met for x in t] == [False, False]
    assert completion_targets(None, S(1.0), None)[1].met is None


def test_fanout_and_waiting_targets_need_the_full_256() -> None:
    assert fanout_target(256, 1.4).met is True
    assert fanout_target(256, 3.4).met is False
    assert fanout_target(64, 0.3).met is None  # a quick run measures fewer: no verdict
    w = waiting_targets(0.002, 41.0, 256)
    assert [x.met for x in w] == [True, True]
    w = waiting_targets(0.02, 80.0, 256)
    assert [x.met for x in w] == [False, False]
    assert waiting_targets(0.002, 41.0, 64)[0].met is None


def test_render_table_aligns_columns() -> None:
    out = render_table(["name", "a"], [["x", "1.00 / 2.00"], ["longer name", "3"]]).splitlines()
    assert out[0].startswith("name") and out[0].endswith("a")
    assert len({len(line) for line in out[:3]}) == 1  # header, rule and widest row line up
    assert out[3].endswith("  3")


def test_parse_mounts_unescapes_fields() -> None:
    m = parse_mounts("src /mnt/with\\040space ext4 rw,noatime 0 0\nbad line\n")
    assert m == [Mount("src", "/mnt/with space", "ext4", ("rw", "noatime"))]


def test_cgroup2_mount_and_favordynmods() -> None:
    m = cgroup2_mount(HYBRID)
    assert m is not None and m.target == "/sys/fs/cgroup/unified"
    assert favordynmods_on(HYBRID) is True
    assert favordynmods_on(HYBRID.replace(",favordynmods", "")) is False
    assert favordynmods_on("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n") is None


def test_remount_keeps_every_other_option() -> None:
    m = cgroup2_mount(HYBRID)
    assert m is not None
    flags, data = remount_args(m, favordynmods=False)
    assert flags == MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    assert data == "nsdelegate"  # a bare remount would clear nsdelegate too
    flags, data = remount_args(Mount("cgroup2", "/x", "cgroup2", ("rw",)), favordynmods=True)
    assert flags == MS_REMOUNT | MS_STRICTATIME and data == "favordynmods"


def test_in_unit_matches_whole_path_components() -> None:
    text = "1:name=systemd:/\n0::/user.slice/user-1000.slice/user@1000.service/ralph.slice/ralph-T1.scope\n"
    assert in_unit(text, "ralph-T1.scope")
    assert not in_unit(text, "ralph-T.scope")
    assert not in_unit(text, "T1.scope")
    assert in_unit(text.replace("ralph-T1.scope", "ralph-T1.scope/sub"), "ralph-T1.scope")
    assert not in_unit("0::/\n", "ralph-T1.scope")
    assert not in_unit("", "x.scope")
