"""Model of tf.utils.find_project_root: the nearest directory with a .tf (or .pi) directory."""

from __future__ import annotations

from pathlib import Path


def find_project_root(start: Path | None = None) -> Path | None:
    cwd = start or Path.cwd()
    for parent in [cwd, *cwd.parents]:
        if (parent / ".tf").is_dir() or (parent / ".pi").is_dir():
            return parent
    return None
