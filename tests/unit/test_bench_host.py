"""The favordynmods server puts the host's state back on every exit path (with a fake mount table: a unit
test must never remount the host's cgroup2)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from bench import host as bench_host
from bench.stats import Mount


class FakeHost:
    """The cgroup2 mount's options, switched by set_favordynmods; every switch is recorded."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.switches: list[bool] = []

    def mount(self) -> Mount:
        return Mount("cgroup2", "/sys/fs/cgroup", "cgroup2",
                     ("rw", "nsdelegate") + (("favordynmods",) if self.on else ()))

    def set(self, on: bool) -> Mount:
        if on != self.on:
            self.switches.append(on)
        self.on = on
        return self.mount()


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost(on=False)
    monkeypatch.setattr(bench_host, "current_mount", fake.mount)
    monkeypatch.setattr(bench_host, "set_favordynmods", fake.set)
    return fake


def _client(ctl: Path, script: list[str], out: list[object], close: bool = True,
            host: FakeHost | None = None) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + 10
        while not (ctl / "req").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        t = bench_host.RemoteToggle(str(ctl), timeout=10)
        for step in script:
            out.append(t.set(step == "on"))
        if close:
            t.close()
            if host is not None:  # close() returns once the original state is back, not later
                out.append(("after close", host.on))
        else:  # die without a word: only the fds go away
            os.close(t._req)
            os.close(t._ack)
    th = threading.Thread(target=run)
    th.start()
    return th


def test_switches_on_request_and_restores_when_the_bench_closes(host: FakeHost, tmp_path: Path) -> None:
    seen: list[object] = []
    th = _client(tmp_path / "ctl", ["on", "off", "on"], seen, host=host)
    assert bench_host.serve(tmp_path / "ctl", os.getuid(), max_seconds=20) == 0
    th.join()
    assert seen == [True, False, True, ("after close", False)]
    assert host.on is False  # the original state
    assert host.switches == [True, False, True, False]
    assert not (tmp_path / "ctl" / "req").exists()


def test_restores_when_the_bench_dies_without_asking(host: FakeHost, tmp_path: Path) -> None:
    seen: list[object] = []
    th = _client(tmp_path / "ctl", ["on"], seen, close=False)
    bench_host.serve(tmp_path / "ctl", os.getuid(), max_seconds=20)
    th.join()
    assert seen == [True] and host.on is False


def test_restores_on_sigterm_to_the_server(host: FakeHost, tmp_path: Path) -> None:
    seen: list[object] = []

    def run() -> None:
        deadline = time.monotonic() + 10
        while not (tmp_path / "ctl" / "req").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        t = bench_host.RemoteToggle(str(tmp_path / "ctl"), timeout=10)
        seen.append(t.set(True))
        seen.append(host.on)
        os.kill(os.getpid(), signal.SIGTERM)  # the server (main thread) gets it
    th = threading.Thread(target=run)
    th.start()
    bench_host.serve(tmp_path / "ctl", os.getuid(), max_seconds=20)
    th.join()
    assert seen == [True, True] and host.on is False


def test_the_originally_on_state_is_what_comes_back(host: FakeHost, tmp_path: Path) -> None:
    host.on = True
    seen: list[object] = []
    th = _client(tmp_path / "ctl", ["off"], seen, host=host)
    bench_host.serve(tmp_path / "ctl", os.getuid(), max_seconds=20)
    th.join()
    assert seen == [False, ("after close", True)] and host.on is True


def test_a_bench_started_before_its_server_waits_for_it(host: FakeHost, tmp_path: Path) -> None:
    seen: list[object] = []

    def run() -> None:  # no waiting for the FIFOs here: RemoteToggle must do it
        t = bench_host.RemoteToggle(str(tmp_path / "ctl"), timeout=10)
        seen.append(t.set(True))
        t.close()
    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.2)  # the server comes up late (this sleep is the condition under test, not a sync)
    bench_host.serve(tmp_path / "ctl", os.getuid(), max_seconds=20)
    th.join()
    assert seen == [True] and host.on is False


def test_no_server_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ctl").mkdir()
    os.mkfifo(tmp_path / "ctl" / "req")
    os.mkfifo(tmp_path / "ctl" / "ack")
    with pytest.raises(RuntimeError, match="no favordynmods server"):
        bench_host.RemoteToggle(str(tmp_path / "ctl"), connect_timeout=0.2)
