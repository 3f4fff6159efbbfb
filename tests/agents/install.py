#!/usr/bin/env python3
"""Install the REAL agent CLIs the tests drive (pinned, from the npm registry), cached: a warm run installs nothing.

    python3 tests/agents/install.py          # what `./dev setup` runs; prints nothing when the cache is warm
    python3 tests/agents/install.py --dir    # the cache directory of these pins

The cache is ~/.cache/ralph-systemd/agents/<key of the pins> (SDBOX_CACHE moves ~/.cache/ralph-systemd):
node_modules/ from `npm install` and bin/ with relative links `pi` and `claude`, so the same tree works where
tests/sandbox/sdbox mounts it in the bed (/opt/agents). npm is used as the machine configures it (its
registry, proxy and CA come from npm's own config; none is named here). pi needs node >= 20.6; the claude
package's binary is native and needs no node. Standard library only: this runs before any venv exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

PI, CLAUDE = "@mariozechner/pi-coding-agent", "@anthropic-ai/claude-code"
PINS = {PI: "0.73.1", CLAUDE: "2.1.328"}
NODE_MIN = (20, 6)
# Inside the bed (tests/sandbox/sdbox binds them read-only there).
GUEST_DIR = "/opt/agents"
GUEST_NODE_DIR = "/opt/node/bin"


class SetupError(Exception):
    """One line: what is wrong and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("SDBOX_CACHE", "~/.cache/ralph-systemd")).expanduser() / "agents"


def key() -> str:
    return hashlib.sha256(json.dumps([PINS, platform.machine()], sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return cache_root() / key()


def is_complete(d: Path) -> bool:
    return (d / ".complete").exists()


def node_version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else None


def node_binary() -> Path:
    """The host's node (resolved, for binding into the bed); SetupError if it is missing or too old."""
    found = shutil.which("node")
    need = ".".join(map(str, NODE_MIN))
    if found is None:
        raise SetupError(f"the real pi needs node >= {need} and there is no `node` on PATH: install node "
                         f"{NODE_MIN[0]} (Debian 13's apt has it; Debian 12's nodejs 18 is too old)")
    v = node_version(found)
    if v is None or v[:2] < NODE_MIN:
        got = ".".join(map(str, v)) if v else "an unreadable version"
        raise SetupError(f"the real pi needs node >= {need}, {found} is {got}: install node {NODE_MIN[0]} "
                         "(Debian 13's apt has it; Debian 12's nodejs 18 is too old) and put it first on PATH")
    return Path(found).resolve()


def claude_binary(modules: Path) -> Path:
    """The native claude: the platform package's binary (needs no install script), else the wrapper's."""
    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    native = modules / f"{CLAUDE}-linux-{arch}" / "claude"
    return native if native.exists() else modules / CLAUDE / "bin" / "claude.exe"


def version_of(argv: list[str], env: dict[str, str]) -> str:
    try:
        r = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"<{e}>"
    return (r.stdout + r.stderr).strip()


def install() -> Path:
    """The cache directory of PINS, built (npm install into a temporary directory, renamed) when absent."""
    node = node_binary()
    target = cache_dir()
    if is_complete(target):
        return target
    if shutil.which("npm") is None:
        raise SetupError(f"installing the real agents ({', '.join(f'{p}@{v}' for p, v in PINS.items())}) needs "
                         "npm, which is not on PATH: install npm (apt-get install npm), or copy a built "
                         f"{target} from another machine")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another setup may be building the same pins: wait for it
        if is_complete(target):
            return target
        tmp = root / f"{target.name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "package.json").write_text(json.dumps({"name": "ralph-systemd-agents", "private": True,
                                                      "dependencies": PINS}, indent=1) + "\n")
        print(f"installing the real agents with npm: {', '.join(f'{p}@{v}' for p, v in PINS.items())} "
              f"(about 600 MB, cached in {target})", file=sys.stderr, flush=True)
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tmp,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout + r.stderr)
            raise SetupError(f"`npm install` of the real agents failed (exit {r.returncode}, output above): check "
                             "npm's registry access (`npm view " + PI + " version`)")
        modules = tmp / "node_modules"
        (tmp / "bin").mkdir()
        (tmp / "bin" / "pi").symlink_to(Path("..") / "node_modules" / PI / "dist" / "cli.js")
        (tmp / "bin" / "claude").symlink_to(Path("..") / claude_binary(modules).relative_to(tmp))
        env = dict(os.environ, PATH=f"{node.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                   PI_OFFLINE="1", HOME=str(tmp / "home"))
        got = {PI: version_of([str(node), str(tmp / "bin" / "pi")], env),
               CLAUDE: version_of([str(tmp / "bin" / "claude")], env)}
        shutil.rmtree(tmp / "home", ignore_errors=True)
        for pkg, want in PINS.items():
            if want not in got[pkg]:
                raise SetupError(f"{pkg}@{want} installed but `--version` says {got[pkg]!r}: see {tmp}")
        (tmp / "pins.json").write_text(json.dumps(PINS, indent=1) + "\n")
        (tmp / ".complete").write_text(key() + "\n")
        tmp.rename(target)
        print(f"real agents ready: pi {PINS[PI]}, claude {PINS[CLAUDE]} in {target}", file=sys.stderr)
    return target


def main(argv: list[str]) -> int:
    if argv == ["--dir"]:
        print(cache_dir())
        return 0
    if argv:
        print("usage: install.py [--dir]", file=sys.stderr)
        return 2
    try:
        install()
    except SetupError as e:
        print(f"real agents: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
