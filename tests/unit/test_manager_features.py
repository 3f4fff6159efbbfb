"""Manager features from its Version string: the distributions' real strings, the gates at their releases."""

from __future__ import annotations

import pytest

from ralph_systemd.manager_features import (
    OLDEST_SUPPORTED, ManagerVersion, features, parse_version,
)


@pytest.mark.parametrize("version, expected", [
    ("252.30-1~deb12u2", ManagerVersion(252, 30)),     # Debian 12
    ("257.13-1", ManagerVersion(257, 13)),             # Debian 13
    ("255.4-1ubuntu8.6", ManagerVersion(255, 4)),      # Ubuntu 24.04
    ("258.2-1.fc43", ManagerVersion(258, 2)),          # Fedora
    ("256", ManagerVersion(256, 0)),
    ("v257.1-123-gabcdef0", ManagerVersion(257, 1)),   # an upstream git build
    ("258~rc3", ManagerVersion(258, 0)),
    (" 253.5 ", ManagerVersion(253, 5)),
])
def test_parse_real_version_strings(version: str, expected: ManagerVersion) -> None:
    assert parse_version(version) == expected


@pytest.mark.parametrize("bad", ["", "systemd", "-252", "x252"])
def test_unparseable_version_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="not a systemd version"):
        parse_version(bad)


def test_versions_order_by_release_then_point() -> None:
    assert parse_version("252.30-1~deb12u2") < parse_version("253.1") < parse_version("257.13-1")
    assert parse_version("257.2") < parse_version("257.13")


def test_gates_on_the_two_tested_managers() -> None:
    old, new = features("252.30-1~deb12u2"), features("257.13-1")
    assert old.supported and new.supported
    assert (old.scope_pidfds, new.scope_pidfds) == (False, True)
    assert (old.scope_oom_policy, new.scope_oom_policy) == (False, True)


@pytest.mark.parametrize("version, pidfds, oom", [
    ("253.0", False, True), ("254.9", False, True), ("255.0", True, True), ("258.1", True, True),
])
def test_each_gate_opens_at_its_release(version: str, pidfds: bool, oom: bool) -> None:
    f = features(version)
    assert (f.scope_pidfds, f.scope_oom_policy) == (pidfds, oom)


def test_unparseable_or_old_manager_gets_the_portable_path() -> None:
    f = features("patched-build")
    assert f.version.major == OLDEST_SUPPORTED and f.supported and not f.scope_pidfds
    assert features("249.11").supported and not features("243.9").supported
