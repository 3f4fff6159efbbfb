"""The bed's Debian mirror comes from the host's own apt sources: deb822 and one-line, pockets skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[1] / "sandbox"
sys.path.insert(0, str(SANDBOX))
import apt_sources  # noqa: E402
from apt_sources import Source, host_mirror, parse_deb822, parse_one_line, pick_mirror  # noqa: E402

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_deb822_of_a_stock_debian_host() -> None:
    assert parse_deb822(DEB822) == [Source("http://mirror.example/debian", ("bookworm", "bookworm-updates")),
                                    Source("http://mirror.example/debian-security", ("bookworm-security",))]
    assert pick_mirror(parse_deb822(DEB822)) == "http://mirror.example/debian"


def test_deb822_security_first_still_picks_the_release_mirror() -> None:
    text = "\n\n".join(reversed(DEB822.split("\n\n")))
    assert pick_mirror(parse_deb822(text)) == "http://mirror.example/debian"


def test_deb822_disabled_source_types_deb_src_and_folded_fields() -> None:
    text = """\
Enabled: no
Types: deb
URIs: http://off.example/debian
Suites: trixie

Types: deb-src
URIs: http://src.example/debian
Suites: trixie

Types: deb deb-src
URIs: http://a.example/debian/
  http://b.example/debian
Suites:
 trixie
 trixie-updates
Components: main
"""
    sources = parse_deb822(text)
    assert [s.uri for s in sources] == ["http://a.example/debian/", "http://b.example/debian"]
    assert sources[0].suites == ("trixie", "trixie-updates")
    assert pick_mirror(sources) == "http://a.example/debian"   # trailing slash dropped


def test_one_line_with_options_comments_and_pockets() -> None:
    text = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://sec.example/debian-security bookworm-security main
deb [ arch=amd64 ] https://mirror.example/debian stable main contrib # trailing comment
deb http://short.example/debian
"""
    sources = parse_one_line(text)
    assert sources == [Source("http://sec.example/debian-security", ("bookworm-security",)),
                       Source("https://mirror.example/debian", ("stable",))]
    assert pick_mirror(sources) == "https://mirror.example/debian"


@pytest.mark.parametrize("sources", [
    [],
    [Source("http://mirror.example/ubuntu", ("noble", "noble-updates"))],          # not a Debian suite
    [Source("http://mirror.example/debian", ("bookworm-backports",))],            # a pocket only
    [Source("cdrom:[Debian GNU/Linux 12]/", ("bookworm",))],                       # debootstrap cannot use it
    [Source("mirror+file:/etc/apt/mirrors.txt", ("bookworm",))],
])
def test_no_usable_debian_source(sources: list[Source]) -> None:
    assert pick_mirror(sources) is None


def test_host_files_in_apts_order_and_only_list_and_sources(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {
        "sources.list.d/a.sources.disabled": DEB822.replace("mirror.example", "disabled.example"),
        "sources.list.d/b.sources": DEB822.replace("mirror.example", "deb822.example"),
        "sources.list.d/c.list": "deb http://list.example/debian trixie main\n",
    })
    assert host_mirror(etc) == "http://deb822.example/debian"
    (etc / "sources.list").write_text("deb http://main.example/debian bookworm main\n")
    assert host_mirror(etc) == "http://main.example/debian"     # sources.list is read first
    (etc / "sources.list").write_text("")
    (etc / "sources.list.d/b.sources").unlink()
    assert host_mirror(etc) == "http://list.example/debian"


def test_nothing_readable_is_none(tmp_path: Path) -> None:
    assert host_mirror(tmp_path / "missing") is None
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "x.sources").mkdir()   # unreadable as a file: skipped, not a crash
    assert host_mirror(tmp_path) is None


def test_cli_without_a_source_says_how_to_set_one_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(apt_sources, "host_mirror", lambda: None)
    assert apt_sources.main(["RALPH_DEBIAN_MIRROR"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set RALPH_DEBIAN_MIRROR=URL" in err


def test_cli_prints_the_hosts_mirror_or_fails_cleanly() -> None:
    r = subprocess.run([sys.executable, str(SANDBOX / "apt_sources.py")], capture_output=True, text=True)
    assert (r.returncode, r.stdout.count("\n")) in ((0, 1), (2, 0))
