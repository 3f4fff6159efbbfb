"""What a systemd manager supports, from its `Version` property: pure, no D-Bus.

The project supports systemd 244 and newer (244 gave scopes RuntimeMaxSec=) and is tested on 252 (Debian 12)
and 257 (Debian 13). Newer
managers offer better mechanisms for some of what we do; this module says which, from the version
string the manager reports (`org.freedesktop.systemd1.Manager.Version`, e.g. "252.30-1~deb12u2",
"257.13-1", "255.4-1ubuntu8", "258.2-1.fc43"), so callers can use them where they exist and keep the
old path elsewhere. Each gate names the release whose NEWS announced the feature; a True is a guarantee, a False
below it is conservative (a distribution's stable series may carry a backport), and the integration test
`test_bed.py` checks each gate against the real managers CI runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OLDEST_SUPPORTED = 244
"""The oldest manager the project supports: NEWS 244, "RuntimeMaxSec= is now supported by scopes"."""
OLDEST_TESTED = 252
"""The oldest manager CI runs the integration suite on (Debian 12's)."""

SCOPE_OOM_POLICY = 253
"""NEWS 253: "Scope units now support OOMPolicy=". Stable series may have it earlier: Debian 12's 252.39 accepts
it and reports it on the Scope interface (measured), so below 253 `scope_oom_policy` means "not known to"."""
SCOPE_PIDFDS = 255
"""NEWS 255: "Scope units can now be created using PIDFDs instead of PIDs": StartTransientUnit accepts
the property `PIDFDs` (signature `ah`) for a scope."""

_VERSION = re.compile(r"v?(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class ManagerVersion:
    """A manager's version: the systemd release (252) and its point release (30 in 252.30)."""

    major: int
    point: int = 0


def parse_version(version: str) -> ManagerVersion:
    """The release in a `Version` string; the distribution's suffix ("-1~deb12u2", "-1ubuntu8") is ignored.

    Raises ValueError naming the string when it does not start with a release number.
    """
    m = _VERSION.match(version.strip())
    if m is None:
        raise ValueError(f"not a systemd version: {version!r} (expected e.g. '257.13-1')")
    return ManagerVersion(int(m.group(1)), int(m.group(2) or 0))


@dataclass(frozen=True)
class ManagerFeatures:
    """What a manager of a given version supports."""

    version: ManagerVersion

    @property
    def supported(self) -> bool:
        """Whether the project supports this manager at all (244 or newer)."""
        return self.version.major >= OLDEST_SUPPORTED

    @property
    def scope_pidfds(self) -> bool:
        """StartTransientUnit takes `PIDFDs` (`ah`) for a scope: the child is named by a pidfd, not a PID."""
        return self.version.major >= SCOPE_PIDFDS

    @property
    def scope_oom_policy(self) -> bool:
        """A scope surely accepts `OOMPolicy=` (stop, kill or continue after the kernel's OOM killer struck in
        it). False below 253 means only "not guaranteed": some 252 builds have it (see SCOPE_OOM_POLICY)."""
        return self.version.major >= SCOPE_OOM_POLICY



def features(version: str) -> ManagerFeatures:
    """The features of a manager reporting `version`.

    A string that cannot be parsed (a patched or unusual build) counts as the oldest supported release:
    every newer mechanism is then off and the portable path is used, which works everywhere.
    """
    try:
        return ManagerFeatures(parse_version(version))
    except ValueError:
        return ManagerFeatures(ManagerVersion(OLDEST_SUPPORTED))
