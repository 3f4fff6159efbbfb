"""The `ralph-systemd` command line."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("ralph-systemd: not yet")
    return 0
