"""The one module that talks to D-Bus: the user's systemd manager, through pystemd, on the USER bus only.

Everything else sees `SystemdBus`, a small typed interface, and our own errors (retry.BusError and
subclasses below). Every call goes through the tenacity policy in `retry`; on a dropped connection the
bus reconnects, re-subscribes and re-takes its unit refs before the retry.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ralph_systemd import instrument
from ralph_systemd.retry import (
    DEFAULT_RETRY_BUDGET_S,
    TRANSIENT_DBUS_ERRORS,
    BusError,
    TransientBusError,
    call_with_retry,
)

log = logging.getLogger("ralph_systemd.bus")

SYSTEMD = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER_IFACE = b"org.freedesktop.systemd1.Manager"
UNIT_IFACE = b"org.freedesktop.systemd1.Unit"
SCOPE_IFACE = b"org.freedesktop.systemd1.Scope"
PROPS_IFACE = b"org.freedesktop.DBus.Properties"
DBUS_NAME = b"org.freedesktop.DBus"
DBUS_PATH = b"/org/freedesktop/DBus"
DBUS_IFACE = b"org.freedesktop.DBus"
UNIT_PATH_PREFIX = b"/org/freedesktop/systemd1/unit"
OUR_UNITS = UNIT_PATH_PREFIX + b"/ralph_2d"  # the object paths of units named ralph-* (see unit_path)
NO_LIMIT = 2**64 - 1  # systemd's "infinity" / "not available" for a uint64 property


def monotonic_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock of systemd's *TimestampMonotonic properties."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class NoUserBusError(BusError):
    """There is no user bus or no systemd user manager on it."""


class UnitExistsError(BusError):
    """A unit of that name is already loaded (a live dispatch for the same ticket)."""


class NoSuchUnitError(BusError):
    """No unit of that name is loaded."""


EventKind = Literal["job-removed", "unit-changed", "request-stop", "unit-removed"]


@dataclass(frozen=True)
class BusEvent:
    """A signal from the manager, reduced to what the supervisor routes on."""

    kind: EventKind
    path: str  # the unit's object path (for job-removed: the job's path)
    unit: str | None = None  # unit name, where the signal carries it
    result: str | None = None  # job result for job-removed ("done", "failed", "canceled", ...)
    interface: str | None = None  # unit-changed: which interface's properties changed
    changes: dict[str, Any] | None = None  # unit-changed: the new values (strings decoded, InvocationID as hex)


ENDED_STATES = ("inactive", "failed")  # ActiveState of a unit that has ended (its Result is final)


@dataclass(frozen=True)
class UnitState:
    """One consistent snapshot of a unit (GetAll on Unit and Scope)."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str
    invocation_id: str
    description: str
    documentation: tuple[str, ...]
    active_enter_monotonic_us: int
    inactive_enter_monotonic_us: int
    runtime_max_us: int
    timeout_stop_us: int
    control_group: str
    memory_current: int | None
    cpu_usage_ns: int | None
    controller: str
    refs: tuple[str, ...] = ()  # bus names holding a ref on the unit (Unit.Ref / AddRef)

    @property
    def exists(self) -> bool:
        return self.load_state != "not-found"

    @property
    def ended(self) -> bool:
        return self.active_state in ENDED_STATES


Property = tuple[str, str, Any]  # (name, D-Bus signature, value)


class SystemdBus(Protocol):
    """What the rest of ralph-systemd needs from the user manager."""

    @property
    def unique_name(self) -> str: ...

    def fileno(self) -> int: ...

    def start_transient_scope(self, name: str, properties: Sequence[Property], pids: Sequence[int] = ()) -> str: ...

    def unit_state(self, name: str) -> UnitState: ...

    def unit_processes(self, name: str) -> list[int]: ...

    def unit_outcome(self, name: str) -> tuple[str, str, str]: ...

    def invocation_id(self, name: str) -> str: ...

    def manager_version(self) -> str: ...

    def stop_unit(self, name: str) -> None: ...

    def kill_unit(self, name: str, who: Literal["main", "all"], signum: int) -> None: ...

    def ref_unit(self, name: str) -> None: ...

    def unref_unit(self, name: str) -> None: ...

    def reset_failed(self, name: str) -> None: ...

    def list_units(self, patterns: Sequence[str]) -> list[str]: ...

    def reload(self) -> None: ...

    def drain(self) -> list[BusEvent]: ...

    def close(self) -> None: ...


def unit_path(name: str) -> str:
    """The manager's object path for a unit name (same encoding as sd_bus_path_encode)."""
    out = []
    for i, byte in enumerate(name.encode()):
        if chr(byte).isascii() and (chr(byte).isalpha() or (chr(byte).isdigit() and i > 0)):
            out.append(chr(byte))
        else:
            out.append(f"_{byte:02x}")
    return UNIT_PATH_PREFIX.decode() + "/" + "".join(out)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    # systemd reports "not available" as UINT64_MAX
    return None if value is None or value == NO_LIMIT else int(value)


def _map_error(exc: Exception, what: str) -> BusError:
    """pystemd's exception -> ours, keeping the D-Bus error name and message."""
    name = getattr(exc, "err_name", None) or ""
    name = _s(name) if name else ""
    cls_name = type(exc).__name__
    if not name and cls_name.startswith("DBus") and cls_name.endswith("Error"):
        # pystemd maps known names to classes and drops the name: rebuild it from the class.
        stem = cls_name[4:-5]
        name = {"NoSuchUnit": "org.freedesktop.systemd1.NoSuchUnit"}.get(stem, f"org.freedesktop.DBus.Error.{stem}")
    message = _s(getattr(exc, "err_message", "") or "") or str(exc)
    text = f"{what}: {message} ({name or cls_name})"
    errno_ = getattr(exc, "errno", None)
    if name in TRANSIENT_DBUS_ERRORS or (not name and isinstance(errno_, int) and
                                         -errno_ in (104, 107, 110, 32, 103)):  # ECONNRESET ENOTCONN ETIMEDOUT EPIPE
        return TransientBusError(text, name or None, disconnected=name.endswith(".Disconnected") or not name)
    if name == "org.freedesktop.systemd1.UnitExists":
        return UnitExistsError(text, name)
    if name == "org.freedesktop.systemd1.NoSuchUnit":
        return NoSuchUnitError(text, name)
    return BusError(text, name or None)


def _operation(iface: bytes, method: bytes, path: bytes, args: list[Any]) -> str:
    """A readable name for a call in log lines: `Manager.StopUnit(ralph-x.scope)`, `Properties.GetAll(ralph-x.scope)`."""
    what = f"{iface.decode().rsplit('.', 1)[-1]}.{method.decode()}"
    target: Any = None
    if path.startswith(UNIT_PATH_PREFIX + b"/"):
        target = path[len(UNIT_PATH_PREFIX) + 1:]
    elif args and isinstance(args[0], bytes):
        target = args[0]
    return f"{what}({_s(target)})" if target else what


def _open_failure(e: Exception) -> str:
    """Why the user bus could not be opened, as one line with the fix."""
    err = getattr(e, "errno", None)
    code = abs(err) if isinstance(err, int) else None
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied on the user bus: it belongs to another user ({describe_bus_environment()}). "
                "Run as that user, or point XDG_RUNTIME_DIR at your own /run/user/$(id -u) and unset "
                "DBUS_SESSION_BUS_ADDRESS")
    reason = os.strerror(code) if code else (_s(getattr(e, "err_message", "") or "") or type(e).__name__)
    return f"cannot connect to the user bus ({reason}; {describe_bus_environment()}). {NO_USER_BUS_HINT}"


def describe_bus_environment() -> str:
    return (f"XDG_RUNTIME_DIR={os.environ.get('XDG_RUNTIME_DIR')!r}, "
            f"DBUS_SESSION_BUS_ADDRESS={os.environ.get('DBUS_SESSION_BUS_ADDRESS')!r}")


NO_USER_BUS_HINT = (
    "ralph-systemd needs your systemd user manager and its user bus. On a host with systemd run "
    "`loginctl enable-linger $USER` (so user@UID.service runs without a login session), make sure the "
    "`dbus-user-session` package is installed, and run with XDG_RUNTIME_DIR=/run/user/$(id -u) "
    "(DBUS_SESSION_BUS_ADDRESS then defaults to unix:path=$XDG_RUNTIME_DIR/bus)"
)


class PystemdUserBus:
    """SystemdBus over one pystemd connection to the user bus. Not thread-safe: one owner thread."""

    def __init__(self, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S, *, all_units: bool = False) -> None:
        """all_units: decode every unit's PropertiesChanged, not only those of `ralph-*` units (a client
        following units of other names, such as the benchmark's bare floor client)."""
        self._retry_budget_s = retry_budget_s
        self._followed = UNIT_PATH_PREFIX if all_units else OUR_UNITS
        self._events: list[tuple[str, BusEvent]] = []  # (sender, event) until drain() checks the sender
        self._refs: set[str] = set()
        self._manager_names: set[str] = set()
        self._bus: Any = None
        self._connect()

    # -- connection -------------------------------------------------------------------------------------

    def _connect(self) -> None:
        from pystemd.dbuslib import DBus  # the only import of pystemd's bus in the package

        bus = DBus(user_mode=True)  # the user bus, never the system bus
        try:
            bus.open()
        except Exception as e:
            raise NoUserBusError(_open_failure(e)) from None
        self._bus = bus
        try:
            # Not self._call: its reconnect hook would re-enter _connect. A manager re-executing answers
            # nothing for a moment: retry transient errors on this connection.
            call_with_retry(lambda: self._raw_call(MANAGER_IFACE, MANAGER_PATH, b"Subscribe", b"", []),
                            self._retry_budget_s, operation="Manager.Subscribe")
            self._learn_manager_name()
        except BusError as e:
            self._close_quietly()
            if e.dbus_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                               "org.freedesktop.DBus.Error.NameHasNoOwner"):
                raise NoUserBusError(f"the user bus has no systemd user manager on it ({e}; "
                                     f"{describe_bus_environment()}). {NO_USER_BUS_HINT}") from None
            if e.dbus_name == "org.freedesktop.DBus.Error.AccessDenied":
                raise NoUserBusError(f"the user manager on this bus refused us ({e}): the bus belongs to another "
                                     f"user ({describe_bus_environment()}); run as that user, or point "
                                     "XDG_RUNTIME_DIR at your own /run/user/$(id -u)") from None
            raise
        # All signals we route on; the daemon filters, our callback just queues them, and drain() keeps only
        # those the manager itself sent (any process of the user can address a signal to our connection).
        # pystemd stores attributes on the callback and keeps only a borrowed pointer to it: it must be a
        # plain function, and we must keep it alive as long as the connection.
        def on_signal(msg: Any, error: Any = None, userdata: Any = None) -> None:
            self._on_signal(msg)

        self._callback = on_signal
        for iface, member in ((MANAGER_IFACE, b"JobRemoved"), (MANAGER_IFACE, b"UnitRemoved"),
                              (PROPS_IFACE, b"PropertiesChanged"), (SCOPE_IFACE, b"RequestStop")):
            bus.match_signal(SYSTEMD, None, iface, member, on_signal)
        self._unique_name = _s(bus.get_unique_name())
        for name in list(self._refs):
            try:
                self._raw_call(UNIT_IFACE, unit_path(name).encode(), b"Ref", b"", [])
            except BusError as e:
                log.warning("could not re-take the ref on %s after reconnecting: %s", name, e)

    def _learn_manager_name(self) -> None:
        """Add the manager's current unique bus name to those we accept signals from. It changes when the
        manager re-executes; the old one's last signals may still be queued, and unique names are never
        reused on a bus, so every name the manager has had stays trusted (no other process can take it)."""
        owner = _s(self._raw_call(DBUS_IFACE, DBUS_PATH, b"GetNameOwner", b"s", [SYSTEMD], destination=DBUS_NAME))
        self._manager_names.add(owner)

    def _close_quietly(self) -> None:
        if self._bus is not None:
            try:
                self._bus.close()
            except Exception:
                pass
            self._bus = None

    def _reconnect(self, exc: BaseException) -> None:
        if isinstance(exc, TransientBusError) and exc.disconnected:
            log.warning("user bus connection lost (%s); reconnecting", exc)
            self._close_quietly()
            try:
                self._connect()
            except BusError as e:  # still down: the next attempt retries
                log.warning("reconnect failed: %s", e)

    def close(self) -> None:
        self._close_quietly()

    @property
    def unique_name(self) -> str:
        return self._unique_name

    def fileno(self) -> int:
        if self._bus is None:
            raise TransientBusError("not connected to the user bus", disconnected=True)
        return int(self._bus.get_fd())

    # -- calls --------------------------------------------------------------------------------------------

    def _raw_call(self, iface: bytes, path: bytes, method: bytes, signature: bytes, args: list[Any], *,
                  destination: bytes = SYSTEMD) -> Any:
        from pystemd.dbuslib import apply_signature

        if self._bus is None:
            raise TransientBusError("not connected to the user bus", disconnected=True)
        try:
            compiled = apply_signature(signature, args) if signature else []
            return self._bus.call_method(destination, path, iface, method, compiled).body
        except BusError:
            raise
        except Exception as e:
            raise _map_error(e, f"{iface.decode().rsplit('.', 1)[-1]}.{method.decode()}") from None

    def _call(self, iface: bytes, path: bytes, method: bytes, signature: bytes, args: list[Any]) -> Any:
        return call_with_retry(lambda: self._raw_call(iface, path, method, signature, args),
                               self._retry_budget_s, self._reconnect,
                               operation=_operation(iface, method, path, args))

    def start_transient_scope(self, name: str, properties: Sequence[Property], pids: Sequence[int] = ()) -> str:
        """StartTransientUnit; returns the job path, or "" when the job is not known (see below). `pids`: the
        processes the scope is made for, when they are given as PIDFDs (to recognise our own scope after a
        lost reply)."""
        from pystemd.dbuslib import apply_signature

        pids = list(pids) or [int(p) for prop, _, value in properties if prop == "PIDs" for p in value]
        attempts = 0

        def call() -> Any:
            nonlocal attempts
            attempts += 1
            if self._bus is None:
                raise TransientBusError("not connected to the user bus", disconnected=True)
            args = apply_signature(b"ss", [name.encode(), b"fail"])
            args += [(ord("a"), b"(sv)")]
            for prop, sig, value in properties:
                args += [(ord("r"), b"sv"), (ord("s"), prop.encode()), (ord("v"), sig.encode())]
                args += apply_signature(sig.encode(), [value])
                args += [(-1, None), (-1, None)]
            args += [(-1, None), (ord("a"), b"(sa(sv))"), (-1, None)]
            try:
                return self._bus.call_method(SYSTEMD, MANAGER_PATH, MANAGER_IFACE, b"StartTransientUnit", args).body
            except Exception as e:
                err = _map_error(e, f"StartTransientUnit({name})")
            if isinstance(err, UnitExistsError) and attempts > 1 and self._scope_holds(name, pids):
                # An earlier attempt created it and its reply was lost (the manager re-executed): it is ours.
                log.warning("%s was created by an earlier attempt whose reply was lost; using it", name)
                if self._unique_name != first_connection:  # AddRef went with the old connection
                    self._raw_call(UNIT_IFACE, unit_path(name).encode(), b"Ref", b"", [])
                return b""
            raise err

        first_connection = self._unique_name
        instrument.mark("bus.start_call", name)
        job = call_with_retry(call, self._retry_budget_s, self._reconnect, operation=f"StartTransientUnit({name})")
        self._refs.add(name)  # AddRef=true is among the properties: we hold a ref from now on
        instrument.mark("bus.start_reply", name)
        return _s(job)

    def _scope_holds(self, name: str, pids: list[int]) -> bool:
        """Whether scope `name` contains one of `pids` (it is the one we asked for)."""
        try:
            procs = self._raw_call(SCOPE_IFACE, unit_path(name).encode(), b"GetProcesses", b"", [])
        except BusError:
            return False
        return bool(pids) and any(int(p[1]) in pids for p in procs or [])

    def unit_state(self, name: str) -> UnitState:
        path = unit_path(name).encode()
        u = self._call(PROPS_IFACE, path, b"GetAll", b"s", [UNIT_IFACE])
        if _s(u.get(b"LoadState", b"")) == "not-found" or not name.endswith(".scope"):
            sc: dict[bytes, Any] = {}
        else:
            sc = self._call(PROPS_IFACE, path, b"GetAll", b"s", [SCOPE_IFACE])
        inv = u.get(b"InvocationID", b"")
        return UnitState(
            name=name,
            load_state=_s(u.get(b"LoadState", b"not-found")),
            active_state=_s(u.get(b"ActiveState", b"inactive")),
            sub_state=_s(u.get(b"SubState", b"dead")),
            result=_s(sc.get(b"Result", b"success")),
            invocation_id=inv.hex() if isinstance(inv, (bytes, bytearray)) else "".join(f"{b:02x}" for b in inv),
            description=_s(u.get(b"Description", b"")),
            documentation=tuple(_s(d) for d in u.get(b"Documentation", []) or []),
            active_enter_monotonic_us=int(u.get(b"ActiveEnterTimestampMonotonic", 0)),
            inactive_enter_monotonic_us=int(u.get(b"InactiveEnterTimestampMonotonic", 0)),
            runtime_max_us=int(sc.get(b"RuntimeMaxUSec", NO_LIMIT)),
            timeout_stop_us=int(sc.get(b"TimeoutStopUSec", 0)),
            control_group=_s(sc.get(b"ControlGroup", b"")),
            memory_current=_opt_int(sc.get(b"MemoryCurrent")),
            cpu_usage_ns=_opt_int(sc.get(b"CPUUsageNSec")),
            controller=_s(sc.get(b"Controller", b"")),
            refs=tuple(_s(r) for r in u.get(b"Refs", []) or []),
        )

    def unit_outcome(self, name: str) -> tuple[str, str, str]:
        """(ActiveState, Result, InvocationID) of a scope: three small Gets, for the final verdict. GetAll
        (unit_state) serialises ~100 properties and costs milliseconds; this is the hot path of every
        completion."""
        path = unit_path(name).encode()
        active = _s(self._call(PROPS_IFACE, path, b"Get", b"ss", [UNIT_IFACE, b"ActiveState"]))
        result = _s(self._call(PROPS_IFACE, path, b"Get", b"ss", [SCOPE_IFACE, b"Result"]))
        inv = self._call(PROPS_IFACE, path, b"Get", b"ss", [UNIT_IFACE, b"InvocationID"])
        return active, result, bytes(inv or b"").hex()

    def manager_version(self) -> str:
        """The manager's Version property, e.g. "257.13-1" (what it can do depends on it)."""
        return _s(self._call(PROPS_IFACE, MANAGER_PATH, b"Get", b"ss", [MANAGER_IFACE, b"Version"]))

    def invocation_id(self, name: str) -> str:
        """The unit's InvocationID (hex), one small Get."""
        inv = self._call(PROPS_IFACE, unit_path(name).encode(), b"Get", b"ss", [UNIT_IFACE, b"InvocationID"])
        return bytes(inv or b"").hex()

    def unit_processes(self, name: str) -> list[int]:
        try:
            procs = self._call(SCOPE_IFACE, unit_path(name).encode(), b"GetProcesses", b"", [])
        except NoSuchUnitError:
            return []
        except BusError as e:
            if e.dbus_name == "org.freedesktop.DBus.Error.UnknownObject":
                return []
            raise
        return [int(p[1]) for p in procs or []]

    def stop_unit(self, name: str) -> None:
        self._call(MANAGER_IFACE, MANAGER_PATH, b"StopUnit", b"ss", [name.encode(), b"replace"])

    def kill_unit(self, name: str, who: Literal["main", "all"], signum: int) -> None:
        self._call(MANAGER_IFACE, MANAGER_PATH, b"KillUnit", b"ssi", [name.encode(), who.encode(), signum])

    def ref_unit(self, name: str) -> None:
        self._call(UNIT_IFACE, unit_path(name).encode(), b"Ref", b"", [])
        self._refs.add(name)

    def unref_unit(self, name: str) -> None:
        self._refs.discard(name)
        try:
            self._call(UNIT_IFACE, unit_path(name).encode(), b"Unref", b"", [])
        except BusError as e:  # already gone, or we held no ref: nothing to release
            log.debug("Unref(%s): %s", name, e)

    def reset_failed(self, name: str) -> None:
        try:
            self._call(MANAGER_IFACE, MANAGER_PATH, b"ResetFailedUnit", b"s", [name.encode()])
        except NoSuchUnitError:
            pass

    def list_units(self, patterns: Sequence[str]) -> list[str]:
        rows = self._call(MANAGER_IFACE, MANAGER_PATH, b"ListUnitsByPatterns", b"asas",
                          [[], [p.encode() for p in patterns]])
        return sorted(_s(r[0]) for r in rows or [])

    def reload(self) -> None:
        """Manager.Reload (`systemctl --user daemon-reload`): re-read unit files; returns once done."""
        self._call(MANAGER_IFACE, MANAGER_PATH, b"Reload", b"", [])

    # -- signals ------------------------------------------------------------------------------------------

    def _on_signal(self, msg: Any) -> None:
        # Runs inside bus.process(); pystemd swallows exceptions here, so never raise.
        try:
            # Every unit's PropertiesChanged reaches us (Subscribe): decode only those of our scopes. The
            # header is readable without decoding the body, which costs most (measured: a third of the loop
            # thread's time in a 256-dispatch fan-out went to other units' signals).
            if msg.get_member() == b"PropertiesChanged" and not (msg.get_path() or b"").startswith(self._followed):
                return
            msg.process_reply(True)
            member = _s(msg.headers.get("Member") or b"")
            path = _s(msg.headers.get("Path") or b"")
            sender = _s(msg.headers.get("Sender") or b"")
            body = msg.body
            ev: BusEvent | None = None
            if member == "JobRemoved":
                ev = BusEvent("job-removed", _s(body[1]), unit=_s(body[2]), result=_s(body[3]))
            elif member == "PropertiesChanged":
                if path.startswith(UNIT_PATH_PREFIX.decode() + "/"):
                    changes = {}
                    for key, value in (body[1] or {}).items():
                        k = _s(key)
                        if k == "InvocationID":
                            changes[k] = bytes(value).hex()
                        else:
                            changes[k] = _s(value) if isinstance(value, bytes) else value
                    ev = BusEvent("unit-changed", path, interface=_s(body[0]), changes=changes)
            elif member == "RequestStop":
                ev = BusEvent("request-stop", path)
            elif member == "UnitRemoved":
                ev = BusEvent("unit-removed", _s(body[1]), unit=_s(body[0]))
            if ev is not None:
                self._events.append((sender, ev))
        except Exception as e:  # pragma: no cover - defensive
            log.error("could not decode a D-Bus signal: %s", e)

    def _from_manager(self, queued: list[tuple[str, BusEvent]]) -> list[BusEvent]:
        """The events the manager sent; others (any process of the user can address a signal to us, e.g. a
        forged RequestStop) are dropped. An unknown sender makes us ask once who the manager is now."""
        if any(sender not in self._manager_names for sender, _ in queued):
            try:
                self._learn_manager_name()
            except BusError as e:
                log.debug("GetNameOwner(%s): %s", SYSTEMD.decode(), e)
        out = []
        for sender, ev in queued:
            if sender in self._manager_names:
                out.append(ev)
            else:
                log.warning("ignored a %s signal for %s from %s, which is not the systemd user manager",
                            ev.kind, ev.unit or ev.path, sender or "an unknown sender")
        return out

    def drain(self) -> list[BusEvent]:
        """Process everything the bus has queued; return the signals seen, in order.

        pystemd's process() handles one message per call and does not say whether one was pending, so we
        stop after a few calls in a row that produced nothing (each is a non-blocking read).
        """
        if self._bus is None:  # an earlier reconnect failed: try again (the caller paces these tries)
            self._reconnect(TransientBusError("not connected to the user bus", disconnected=True))
            if self._bus is None:
                raise TransientBusError("not connected to the user bus (reconnecting failed)", disconnected=True)
        idle = 0
        for _ in range(100_000):
            before = len(self._events)
            try:
                self._bus.process()
            except Exception as e:
                mapped = _map_error(e, "processing the user bus")
                if isinstance(mapped, TransientBusError):
                    self._reconnect(TransientBusError(str(mapped), disconnected=True))
                raise mapped from None
            idle = idle + 1 if len(self._events) == before else 0
            if idle >= 3:
                break
        queued, self._events = self._events, []
        return self._from_manager(queued) if queued else []
