"""pytest plugin for the issue-7 reliability suite: each check records its figure, the run ends with a table.

A test asks for the `figure` fixture and calls `figure("name", "0 survivors of 600 descendants")` as soon as
it has measured (before asserting), so a failing check still shows what was measured. The row's pass/fail
is the test's own outcome. Registered from the test modules with `pytest_plugins = ["faults_table"]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest


@dataclass
class Row:
    name: str
    figure: str
    outcome: str = "-"


_ROWS: dict[str, list[Row]] = {}  # by test node id, in the order recorded


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Iterator[Callable[[str, str], None]]:
    """figure(name, text): record (and print at once) one measured figure of this check."""
    rows = _ROWS.setdefault(request.node.nodeid, [])

    def record(name: str, text: str) -> None:
        rows.append(Row(name, text))
        print(f"\nFIGURE  {name}: {text}", flush=True)

    yield record


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    rows = _ROWS.get(report.nodeid)
    if not rows:
        return
    if report.when == "call" or report.failed:
        outcome = "PASS" if report.passed else ("SKIP" if report.skipped else "FAIL")
        for row in rows:
            if row.outcome in ("-", "PASS"):  # a teardown failure turns a passed row into FAIL
                row.outcome = outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = [r for rs in _ROWS.values() for r in rs]
    if not rows:
        return
    w_name = max(len("check"), *(len(r.name) for r in rows))
    w_fig = min(110, max(len("figure"), *(len(r.figure) for r in rows)))
    tr = terminalreporter
    tr.write_sep("=", "reliability and bad-input figures (issue 7)")
    tr.write_line(f"{'check':<{w_name}}  {'figure':<{w_fig}}  result")
    tr.write_line(f"{'-' * w_name}  {'-' * w_fig}  ------")
    for r in rows:
        tr.write_line(f"{r.name:<{w_name}}  {r.figure:<{w_fig}}  {r.outcome}")
    failed = sum(r.outcome != "PASS" for r in rows)
    tr.write_line(f"{len(rows) - failed}/{len(rows)} checks passed")
