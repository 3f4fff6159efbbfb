"""Unit names from ticket ids, escaped by systemd's rules (`systemd-escape`), and back.

Every ticket id maps to exactly one `ralph-<escaped>.scope` name or raises ValueError. The mapping is
injective, so one live dispatch per ticket can be enforced by systemd itself (a second
StartTransientUnit with a live name fails with UnitExists), and the fixed `ralph-` prefix means no
ticket id can name a unit outside `ralph-*`.
"""

from __future__ import annotations

import re

UNIT_PREFIX = "ralph-"
UNIT_SUFFIX = ".scope"
MAX_UNIT_NAME = 255  # systemd: UNIT_NAME_MAX is 256 including the NUL
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def escape(text: str) -> str:
    """systemd-escape(1) without --path: `/` becomes `-`, other unsafe bytes become `\\xNN`."""
    out = []
    for i, byte in enumerate(text.encode("utf-8")):
        if byte == ord("/"):
            out.append("-")
        elif byte in _PLAIN and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescape(text: str) -> str:
    """Inverse of escape()."""
    raw = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "-":
            raw.append(ord("/"))
        elif ch == "\\" and text[i + 1 : i + 2] == "x" and len(text) >= i + 4:
            raw.append(int(text[i + 2 : i + 4], 16))
            i += 3
        else:
            raw.extend(ch.encode())
        i += 1
    return raw.decode("utf-8", errors="replace")


def validate_ticket(ticket: str) -> str:
    """Return the ticket id, or raise ValueError saying what is wrong with it."""
    if not isinstance(ticket, str):
        raise ValueError(f"ticket id must be a string, not {type(ticket).__name__}")
    if not ticket:
        raise ValueError("ticket id is empty: pass the ticket's id, e.g. 'abc-123'")
    bad = [c for c in ticket if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise ValueError(f"ticket id {ticket!r} contains control character {bad[0]!r}: use printable text")
    if ticket != ticket.strip():
        raise ValueError(f"ticket id {ticket!r} has leading or trailing whitespace: strip it")
    try:
        ticket.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"ticket id {ticket!r} is not valid Unicode text: {e.reason}") from None
    return ticket


def unit_name_for_ticket(ticket: str) -> str:
    """`ralph-<escaped ticket>.scope`, or ValueError if the ticket is invalid or too long."""
    validate_ticket(ticket)
    name = f"{UNIT_PREFIX}{escape(ticket)}{UNIT_SUFFIX}"
    if len(name) > MAX_UNIT_NAME:
        raise ValueError(
            f"ticket id is too long: its unit name would be {len(name)} characters and systemd allows "
            f"{MAX_UNIT_NAME}; use a ticket id of at most ~{MAX_UNIT_NAME - len(UNIT_PREFIX) - len(UNIT_SUFFIX)} "
            "plain characters (letters, digits, '_', '.', ':'); other characters take 4 each once escaped"
        )
    return name


def ticket_from_unit_name(unit: str) -> str | None:
    """The ticket id a `ralph-*.scope` unit name was made from, or None for other names."""
    if not (unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX)):
        return None
    return unescape(unit[len(UNIT_PREFIX) : -len(UNIT_SUFFIX)])


def validate_session(session: str) -> str:
    """Session ids go into file names and unit descriptions: keep them to a safe alphabet."""
    if not isinstance(session, str) or not _SESSION_RE.fullmatch(session):
        raise ValueError(
            f"session id {session!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit (or leave it out to have one generated)"
        )
    return session


def log_file_name(ticket: str, session: str) -> str:
    """Per-session log file name; the escaped ticket has no '/' so it stays inside the log directory."""
    return f"{escape(ticket)}.{session}.log"
