"""Integration tests talk to a real systemd user manager.

Without one they skip with the reason, except when CI or RALPH_REQUIRE_INTEGRATION is set: then the run
fails with a clear message. With RALPH_REQUIRE_INTEGRATION=1 any skipped test fails the run, so a test
bed that silently lost its user manager can never look green.
"""

from __future__ import annotations

import os
import subprocess

import pytest

_REQUIRE = bool(os.environ.get("RALPH_REQUIRE_INTEGRATION") or os.environ.get("CI"))


def _user_manager_problem() -> str | None:
    try:
        r = subprocess.run(["systemctl", "--user", "is-system-running"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemctl --user failed: {e}"
    if r.stdout.strip() not in ("running", "degraded"):
        return (f"no systemd user manager reachable (systemctl --user is-system-running: "
                f"{(r.stdout + r.stderr).strip()!r}; XDG_RUNTIME_DIR={os.environ.get('XDG_RUNTIME_DIR')!r}, "
                f"DBUS_SESSION_BUS_ADDRESS={os.environ.get('DBUS_SESSION_BUS_ADDRESS')!r}). "
                "Run the suite with `./dev test`, which brings up the test bed.")
    return None


# Checks whose figures belong in the reliability table: `./dev faults` runs them with the slow ones.
RELIABILITY_MODULES = ("test_loop_thread.py", "test_operator_safety.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: a row of the reliability table (./dev faults runs these too)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in RELIABILITY_MODULES:
            item.add_marker(pytest.mark.reliability)
    problem = _user_manager_problem()
    if problem is None:
        return
    if _REQUIRE:
        raise pytest.UsageError(f"integration tests cannot run: {problem}")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=problem))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("RALPH_REQUIRE_INTEGRATION"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        print(f"\nRALPH_REQUIRE_INTEGRATION: {len(skipped)} integration test(s) skipped; failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
