"""Model of tf.cli.main: `tf ralph ...` goes to tf.ralph.main."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    if argv and argv[0] == "ralph":
        from tf import ralph
        return int(ralph.main(argv[1:]))
    return 1
