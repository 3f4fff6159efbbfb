"""Issue 7, injected D-Bus faults: a fake pystemd connection under the real PystemdUserBus (and a fake
SystemdBus under the real Supervisor). Transient errors are retried within the budget and no faster than
the exponential backoff; permanent ones surface at once, after exactly one attempt, with their message.

Not slow: these run in the everyday suite on the host. Each prints its figure.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fakes import NullBus
from fakes import unit_state as fake_unit_state

pystemd_dbusexc = pytest.importorskip("pystemd.dbusexc")
import pystemd.dbuslib  # noqa: E402

from ralph_systemd.bus import (  # noqa: E402
    BusEvent,
    NoUserBusError,
    Property,
    PystemdUserBus,
    UnitExistsError,
    UnitState,
)
from ralph_systemd.retry import BusError, TransientBusError  # noqa: E402
from ralph_systemd.supervisor import Supervisor  # noqa: E402

BUDGET = 0.5
NO_REPLY = "Message recipient disconnected from message bus without replying"


def figure(name: str, text: str) -> None:
    print(f"\nFIGURE  {name}: {text}", flush=True)


def transient(kind: str) -> Exception:
    cls = getattr(pystemd_dbusexc, f"DBus{kind}Error")
    return cls(-110, None, NO_REPLY.encode())  # type: ignore[no-any-return]


def permanent(kind: str) -> Exception:
    if kind == "UnitExists":
        return pystemd_dbusexc.DBusBaseError(  # type: ignore[no-any-return]
            -17, b"org.freedesktop.systemd1.UnitExists", b"Unit ralph-x.scope already exists.")
    cls = getattr(pystemd_dbusexc, f"DBus{kind}Error")
    return cls(-13, None, f"injected {kind}".encode())  # type: ignore[no-any-return]


class Reply:
    def __init__(self, body: Any) -> None:
        self.body = body


class FakeDBus:
    """Stands in for pystemd.dbuslib.DBus: every call is counted; `faults[method]` is a list of exceptions
    raised by the next calls of that method (an endless iterator for "always")."""

    connects = 0
    open_times: list[float] = []
    calls: Counter[str] = Counter()
    call_times: list[float] = []
    faults: dict[bytes, Iterator[Exception]] = {}
    open_faults: Iterator[Exception] = iter(())
    created_units: set[bytes] = set()

    def __init__(self, user_mode: bool = True) -> None:
        assert user_mode, "the system bus must never be opened"
        r, w = os.pipe()
        self._fds = (r, w)

    @classmethod
    def reset(cls) -> None:
        cls.connects = 0
        cls.open_times = []
        cls.calls = Counter()
        cls.call_times = []
        cls.faults = {}
        cls.open_faults = iter(())
        cls.created_units = set()

    def open(self) -> None:
        FakeDBus.connects += 1
        FakeDBus.open_times.append(time.monotonic())
        fault = next(FakeDBus.open_faults, None)
        if fault is not None:
            raise fault

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def get_unique_name(self) -> bytes:
        return b":1.42"

    def get_fd(self) -> int:
        return self._fds[0]

    def match_signal(self, *args: Any) -> None:
        pass

    def process(self) -> None:
        return None

    def call_method(self, dest: bytes, path: bytes, iface: bytes, method: bytes, args: Any) -> Reply:
        FakeDBus.calls[method.decode()] += 1
        FakeDBus.call_times.append(time.monotonic())
        it = FakeDBus.faults.get(method)
        fault = next(it, None) if it is not None else None
        if method == b"StartTransientUnit":
            name = args[0][1] if isinstance(args[0], tuple) else b"?"
            if fault is not None and getattr(fault, "_after_effect", False):
                FakeDBus.created_units.add(name)  # the manager did it, but the reply was lost
                raise fault
            if fault is not None:
                raise fault
            if name in FakeDBus.created_units:
                raise permanent("UnitExists")
            FakeDBus.created_units.add(name)
            return Reply(b"/org/freedesktop/systemd1/job/7")
        if fault is not None:
            raise fault
        if method == b"GetAll":
            return Reply({b"LoadState": b"loaded", b"ActiveState": b"active", b"SubState": b"running",
                          b"Result": b"success", b"InvocationID": b"\x01\x02"})
        if method == b"GetProcesses":
            return Reply([(b"/", 4242, b"sleep")])
        return Reply(None)


@pytest.fixture
def fake_dbus(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeDBus]]:
    FakeDBus.reset()
    monkeypatch.setattr(pystemd.dbuslib, "DBus", FakeDBus)
    yield FakeDBus


def backoff_bound(budget: float) -> int:
    """Most attempts tenacity's wait_exponential_jitter(initial=0.01, max=1) allows within `budget` s:
    every wait is at least 0.01 * 2**k (capped at 1 s), so the count of waits that fit, plus the last try."""
    waited, n = 0.0, 0
    while waited < budget:
        waited += min(1.0, 0.01 * 2 ** n)
        n += 1
    return n + 1


# -- transient --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["NoReply", "Disconnected", "TimedOut", "ServiceUnknown", "NameHasNoOwner"])
@pytest.mark.parametrize("n", [1, 5])
def test_n_transient_failures_then_success(kind: str, n: int, fake_dbus: type[FakeDBus]) -> None:
    bus = PystemdUserBus(retry_budget_s=5.0)
    fake_dbus.faults[b"GetAll"] = iter([transient(kind) for _ in range(n)])
    t0 = time.monotonic()
    st = bus.unit_state("ralph-x.scope")
    took = time.monotonic() - t0
    assert isinstance(st, UnitState) and st.active_state == "active"
    assert fake_dbus.calls["GetAll"] == n + 2  # n failures, then the Unit and Scope snapshots
    reconnects = fake_dbus.connects - 1
    assert reconnects == (n if kind == "Disconnected" else 0)  # a dropped connection is re-opened first
    assert took < 1.0
    if n == 5:
        figure(f"D-Bus {kind} x{n} then success", f"succeeded after {n + 1} attempts in {took * 1000:.0f} ms "
                                                   f"({reconnects} reconnects)")


def test_endless_transient_gives_up_after_the_budget_with_the_original_error(fake_dbus: type[FakeDBus]) -> None:
    bus = PystemdUserBus(retry_budget_s=BUDGET)
    fake_dbus.faults[b"GetAll"] = iter(lambda: transient("NoReply"), None)
    t0 = time.monotonic()
    with pytest.raises(TransientBusError) as ei:
        bus.unit_state("ralph-x.scope")
    took = time.monotonic() - t0
    attempts = fake_dbus.calls["GetAll"]
    bound = backoff_bound(BUDGET)
    figure("D-Bus endless NoReply", f"gave up after {took:.2f} s (budget {BUDGET} s) and {attempts} attempts "
                                    f"(backoff bound {bound}) with: {ei.value}")
    assert NO_REPLY in str(ei.value) and ei.value.dbus_name == "org.freedesktop.DBus.Error.NoReply"
    assert BUDGET <= took < BUDGET + 1.0 + 0.3  # the last wait may be up to the 1 s cap
    assert 3 <= attempts <= bound


def test_no_retry_storm_when_the_connection_keeps_dropping(fake_dbus: type[FakeDBus]) -> None:
    """Disconnected on every call and the bus refusing every reconnect: attempts and reconnects both stay
    within the backoff bound (no tight loop), and the error says what happened."""
    bus = PystemdUserBus(retry_budget_s=BUDGET)
    fake_dbus.faults[b"GetAll"] = iter(lambda: transient("Disconnected"), None)
    fake_dbus.open_faults = iter(lambda: OSError(111, "Connection refused"), None)
    t0 = time.monotonic()
    with pytest.raises(TransientBusError):
        bus.unit_state("ralph-x.scope")
    took = time.monotonic() - t0
    bound = backoff_bound(BUDGET)
    total = sum(fake_dbus.calls.values()) - 1  # minus the first Subscribe
    reconnects = fake_dbus.open_times[1:]
    gaps = [b - a for a, b in zip(reconnects, reconnects[1:])]
    figure("D-Bus retry storm", f"{total} calls + {fake_dbus.connects - 1} reconnect attempts in {took:.2f} s while "
                                f"the bus was down (bound {bound} each)")
    assert total <= bound and fake_dbus.connects - 1 <= bound
    assert all(g >= 0.009 for g in gaps)  # paced by the backoff, never back to back


# -- permanent --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,cls,name", [
    ("AccessDenied", BusError, "org.freedesktop.DBus.Error.AccessDenied"),
    ("InvalidArgs", BusError, "org.freedesktop.DBus.Error.InvalidArgs"),
    ("UnitExists", UnitExistsError, "org.freedesktop.systemd1.UnitExists"),
])
def test_permanent_errors_surface_at_once_after_one_attempt(kind: str, cls: type[BusError], name: str,
                                                           fake_dbus: type[FakeDBus]) -> None:
    bus = PystemdUserBus(retry_budget_s=5.0)
    err = permanent(kind)
    fake_dbus.faults[b"StartTransientUnit"] = iter([err])
    props: Sequence[Property] = [("Description", "s", b"x"), ("PIDs", "au", [4242])]
    t0 = time.monotonic()
    with pytest.raises(cls) as ei:
        bus.start_transient_scope("ralph-x.scope", props)
    took = time.monotonic() - t0
    attempts = fake_dbus.calls["StartTransientUnit"]
    figure(f"D-Bus {kind}", f"{attempts} attempt, surfaced in {took * 1000:.1f} ms: {ei.value}")
    assert attempts == 1
    assert ei.value.dbus_name == name
    assert (err.err_message.decode() if isinstance(err.err_message, bytes) else err.err_message) in str(ei.value)
    assert took < 0.05
    assert not isinstance(ei.value, TransientBusError)


def test_no_user_bus_is_one_clear_error(fake_dbus: type[FakeDBus]) -> None:
    fake_dbus.open_faults = iter([OSError(2, "No such file or directory")])
    with pytest.raises(NoUserBusError, match="loginctl enable-linger"):
        PystemdUserBus()
    assert fake_dbus.connects == 1


def test_start_retried_after_a_lost_reply_is_not_mistaken_for_a_duplicate(fake_dbus: type[FakeDBus]) -> None:
    """The manager created the scope but its reply was lost (it re-executed): the retry meets our own unit,
    UnitExists. That must count as success when the unit holds our process, not as "ticket already live"."""
    bus = PystemdUserBus(retry_budget_s=5.0)
    lost = transient("NoReply")
    lost._after_effect = True  # type: ignore[attr-defined]
    fake_dbus.faults[b"StartTransientUnit"] = iter([lost])
    job = bus.start_transient_scope("ralph-x.scope", [("PIDs", "au", [4242])])
    figure("D-Bus reply lost by a re-exec", f"StartTransientUnit attempts {fake_dbus.calls['StartTransientUnit']}; "
                                            f"launch result: job {job!r} (our own unit, not UnitExists)")
    assert fake_dbus.calls["StartTransientUnit"] == 2
    # And a real duplicate (another process's unit) is still UnitExists.
    fake_dbus.faults[b"StartTransientUnit"] = iter([lost])
    with pytest.raises(UnitExistsError):
        bus.start_transient_scope("ralph-y.scope", [("PIDs", "au", [999])])


# -- the supervisor over a failing bus ---------------------------------------------------------------------------

class DownBus(NullBus):
    """A SystemdBus whose connection is gone for good after attach: every drain fails."""

    def __init__(self) -> None:
        super().__init__()
        os.write(self.w, b"x")  # always readable, like a socket with an error pending
        self.drains = 0
        self.state_calls = 0

    def unit_state(self, name: str) -> UnitState:
        self.state_calls += 1
        if self.state_calls > 1:
            time.sleep(0.01)  # stands for the retry policy's own backoff inside a real call
            raise TransientBusError("not connected to the user bus", disconnected=True)
        return fake_unit_state(name, description="ralph ticket=x session=s1: sleep")

    def unit_processes(self, name: str) -> list[int]:
        return [4242]

    def unit_outcome(self, name: str) -> tuple[str, str, str]:
        raise TransientBusError("not connected to the user bus", disconnected=True)

    def drain(self) -> list[BusEvent]:
        self.drains += 1
        raise TransientBusError("user bus connection lost", disconnected=True)


def test_supervisor_wait_stays_bounded_and_calm_while_the_bus_is_down() -> None:
    bus = DownBus()
    sup = Supervisor(bus=bus)
    d = sup.attach("ralph-x.scope")
    t0 = time.monotonic()
    with pytest.raises((TimeoutError, BusError)) as ei:
        sup.wait(d, timeout=1.0)
    took = time.monotonic() - t0
    figure("supervisor on a dead bus", f"wait(timeout=1) ended after {took:.2f} s with {type(ei.value).__name__}; "
                                       f"{bus.drains} drains, {bus.state_calls - 1} state reads meanwhile")
    sup.close(stop_running=False)
    assert took < 1.5
    assert bus.drains <= 50, "the loop spins on a dead bus"
