"""`ralph-systemd tf <tf's own arguments>`: run tf's CLI in this process with the systemd backend installed.

    ralph-systemd tf ralph start --parallel 2      (or: python -m ralph_systemd.tf ralph start --parallel 2)

Exit status: tf's own; 130/143 after SIGINT/SIGTERM (dispatches stopped with the ladder first); 2 for a bad
"systemd" section in .tf/ralph/config.json (nothing started); 1 when tf cannot be imported.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ralph_systemd.tf.config import BackendConfig, load_project_config
from ralph_systemd.tf.install import TfNotFound, finish, install

USAGE = """usage: ralph-systemd tf <tf's own arguments>
  Runs tf's CLI with ralph-systemd as Ralph's execution backend (every dispatch in its own scope).
  e.g.  ralph-systemd tf ralph start --parallel 2
        ralph-systemd tf ralph run T-42
  Options for the backend: the "systemd" section of .tf/ralph/config.json (see the README)."""


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if not argv or argv == ["--help"] or argv == ["-h"]:
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        tf_cli = importlib.import_module("tf.cli")
        find_project_root = importlib.import_module("tf.utils").find_project_root
    except ImportError as e:
        print(f"ralph-systemd tf: tf (pi-ticketflow) is not importable ({e}); install it in this Python "
              "environment or put a tf checkout on PYTHONPATH", file=sys.stderr)
        return 1
    root: Path | None = find_project_root()
    try:
        config = load_project_config(root) if root is not None else BackendConfig()
    except ValueError as e:
        print(f"ralph-systemd tf: {e}", file=sys.stderr)
        return 2
    try:
        install(config)
    except TfNotFound as e:
        print(f"ralph-systemd tf: {e}", file=sys.stderr)
        return 1
    fire_and_forget = argv[:2] == ["ralph", "run"]
    try:
        rc = tf_cli.main(list(argv))
    except SystemExit as e:
        rc = _exit_code(e)
    finally:
        finish(detach=fire_and_forget)
    return int(rc or 0)
