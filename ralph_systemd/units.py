"""The unit files ralph-systemd ships (ralph.slice), and installing them into the user's unit directory.

They are package data (ralph_systemd/units/), so a pip-installed ralph-systemd has them; the repository's
top-level units/ holds the same files (a unit test keeps the two identical). Installing is optional: the
launcher works without them (systemd then makes ralph.slice implicitly).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path



def shipped_units() -> dict[str, bytes]:
    """File name -> contents of every unit file in the package."""
    root = resources.files("ralph_systemd") / "units"
    return {f.name: f.read_bytes() for f in root.iterdir()
            if f.is_file() and f.name.endswith((".slice", ".service", ".target"))}


def user_unit_dir() -> Path:
    """$XDG_CONFIG_HOME/systemd/user (default ~/.config/systemd/user): where the user manager looks."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "systemd" / "user"


@dataclass(frozen=True)
class Installed:
    path: Path
    changed: bool  # False: an identical file was already there


def install_units(dest: Path) -> list[Installed]:
    """Write the shipped units into dest (created if needed), each atomically; report what changed.

    ValueError (with the reason and a fix) when dest cannot be written."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create {dest}: {e.strerror}; pass --dir with a writable directory") from None
    out = []
    for name, data in sorted(shipped_units().items()):
        path = dest / name
        try:
            if path.is_file() and path.read_bytes() == data:
                out.append(Installed(path, False))
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=dest)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            raise ValueError(f"cannot write {path}: {e.strerror}; pass --dir with a writable directory") from None
        out.append(Installed(path, True))
    return out

