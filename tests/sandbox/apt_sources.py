#!/usr/bin/env python3
"""The Debian mirror this host's own apt already uses, for debootstrap (test bed and VM box builder).

No mirror host name is written in the project: the beds are built from whatever archive the host is
configured for (deb822 `/etc/apt/sources.list.d/*.sources`, one-line `sources.list` and `*.list`).
A source counts when it is enabled, has type `deb`, an http(s) or file URI, and at least one suite that
is a Debian release itself (not its `-security`, `-updates` or `-backports` pocket).

    python3 apt_sources.py           prints the mirror, or one line saying how to set one (exit 2)

Standard library only: sdbox and vagrant/build-box run it on a bare host before any venv exists.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Debian's codenames and suite aliases: a source with one of these suites is a Debian archive mirror.
DEBIAN_SUITES = frozenset({
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable",
})
SCHEMES = ("http://", "https://", "file:/")
HOW_TO_SET = ("no Debian apt source found in /etc/apt/sources.list or /etc/apt/sources.list.d/: "
              "set {var}=URL to a Debian archive mirror (the URL a `deb URL bookworm main` line would have)")


@dataclass(frozen=True)
class Source:
    """One apt source: a URI and the suites read from it (types `deb` only)."""

    uri: str
    suites: tuple[str, ...]


def parse_deb822(text: str) -> list[Source]:
    """Sources of a deb822 `.sources` file: stanzas split by blank lines, `#` comments, folded fields."""
    out: list[Source] = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key is not None:   # a folded continuation line
                fields[key] += " " + line.strip()
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                key = None
                continue
            key = name.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        suites = tuple(fields.get("suites", "").split())
        out += [Source(uri, suites) for uri in fields.get("uris", "").split()]
    return out


def parse_one_line(text: str) -> list[Source]:
    """Sources of a one-line `sources.list`: `deb [options] URI suite [component...]`."""
    out: list[Source] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line, count=1)   # options such as [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            out.append(Source(words[1], (words[2],)))
    return out


def is_debian_suite(suite: str) -> bool:
    return suite.strip("/") in DEBIAN_SUITES


def pick_mirror(sources: list[Source]) -> str | None:
    """The first source that serves a Debian release itself over a URI debootstrap can use."""
    for s in sources:
        if s.uri.startswith(SCHEMES) and any(is_debian_suite(x) for x in s.suites):
            return s.uri.rstrip("/")
    return None


def host_sources(etc_apt: Path = Path("/etc/apt")) -> list[Source]:
    """Every source apt reads, in apt's order: sources.list, then sources.list.d/ by name."""
    sources: list[Source] = []
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        sources += parse_deb822(text) if f.suffix == ".sources" else parse_one_line(text)
    return sources


def host_mirror(etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The Debian mirror the host's apt uses, or None when none can be read."""
    return pick_mirror(host_sources(etc_apt))


def main(argv: list[str]) -> int:
    var = argv[0] if argv else "SDBOX_MIRROR"
    mirror = host_mirror()
    if mirror is None:
        print(HOW_TO_SET.format(var=var), file=sys.stderr)
        return 2
    print(mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
