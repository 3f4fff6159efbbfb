"""Unit and log file names from (project, ticket), escaped by systemd's rules (`systemd-escape`), and back.

A unit is `ralph-<project key>-<escaped ticket>.scope`. The project key is 8 hex digits of sha256 of the
project root's real path (the directory holding the git common dir, so all worktrees of a repository share
it; outside git, the directory itself). Every (key, ticket) maps to exactly one name or raises ValueError;
the mapping is injective, so one live dispatch per ticket *within a project* is enforced by systemd itself (a
second StartTransientUnit with a live name fails with UnitExists), two projects' `T-1` never collide, and the
fixed `ralph-` prefix means no ticket id can name a unit outside `ralph-*`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

UNIT_PREFIX = "ralph-"
UNIT_SUFFIX = ".scope"
MAX_UNIT_NAME = 255  # systemd: UNIT_NAME_MAX is 256 including the NUL
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_LEN = 8
_KEY_RE = re.compile(r"[0-9a-f]{8}")
_UNIT_RE = re.compile(r"ralph-([0-9a-f]{8})-([A-Za-z0-9:_.\\-]+)\.scope")
#: Room for the escaped ticket in a unit name: ralph-<8 hex>-<escaped ticket>.scope, 255 characters at most.
MAX_TICKET_IN_UNIT = MAX_UNIT_NAME - len(UNIT_PREFIX) - KEY_LEN - 1 - len(UNIT_SUFFIX)
_LEGACY_RE = re.compile(r"ralph-[A-Za-z0-9:_.\\-]+\.scope")
MAX_FILE_NAME = 255  # NAME_MAX of Linux file systems
_LOG_RE = re.compile(r"([0-9a-f]{8})\.([A-Za-z0-9:_.\\-]+)@([A-Za-z0-9_.-]+)\.log")


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
    """Inverse of escape() (lenient: undecodable bytes become U+FFFD)."""
    return _unescape_bytes(text).decode("utf-8", errors="replace")


def unescape_strict(text: str) -> str:
    """Inverse of escape(); ValueError for a malformed escape or bytes that are not UTF-8."""
    try:
        return _unescape_bytes(text, strict=True).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{text!r} does not unescape to UTF-8 text: {e.reason}") from None


def _unescape_bytes(text: str, strict: bool = False) -> bytes:
    raw = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "-":
            raw.append(ord("/"))
        elif ch == "\\" and text[i + 1 : i + 2] == "x" and len(text) >= i + 4 \
                and all(c in "0123456789abcdefABCDEF" for c in text[i + 2 : i + 4]):
            raw.append(int(text[i + 2 : i + 4], 16))
            i += 3
        elif ch == "\\" and strict:
            raise ValueError(f"{text!r} has a malformed escape at position {i}")
        else:
            raw.extend(ch.encode())
        i += 1
    return bytes(raw)


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


def unit_name_for_ticket(ticket: str, project: str | None = None) -> str:
    """`ralph-<project key>-<escaped ticket>.scope`, or ValueError if the ticket is invalid or too long.

    project: a key from project_key(); None = the project of the current working directory."""
    validate_ticket(ticket)
    key = _check_key(project if project is not None else project_key("."))
    esc = escape(ticket)
    name = f"{UNIT_PREFIX}{key}-{esc}{UNIT_SUFFIX}"
    if len(name) > MAX_UNIT_NAME:
        raise ValueError(
            f"ticket id is too long: escaped it is {len(esc)} characters and a unit name allows {MAX_TICKET_IN_UNIT}; "
            f"use a shorter ticket id (letters, digits, '_', '.', ':' take 1 character each, others 4)")
    return name


def parse_unit_name(unit: str) -> tuple[str, str] | None:
    """(project key, ticket) of a `ralph-<key>-<escaped ticket>.scope` name, or None for any other name."""
    m = _UNIT_RE.fullmatch(unit)
    if m is None:
        return None
    try:
        ticket = unescape_strict(m.group(2))
    except ValueError:
        return None
    if escape(ticket) != m.group(2):  # not a name we would make (e.g. a non-canonical escape)
        return None
    return m.group(1), ticket


def is_unit_name_of_ours(unit: str) -> bool:
    """A name we make (`ralph-<key>-<ticket>.scope`) or made before project keys (`ralph-<ticket>.scope`):
    a valid unit name of that shape; never a glob, a path or an empty ticket."""
    if parse_unit_name(unit) is not None:
        return True
    return len(unit) <= MAX_UNIT_NAME and _LEGACY_RE.fullmatch(unit) is not None


def find_project_root(directory: str | os.PathLike[str]) -> Path:
    """The project a directory belongs to: the directory holding the git *common* directory (so every worktree
    of one repository is one project), or, outside git, the directory itself. File reads only, no `git`."""
    start = Path(os.path.realpath(directory))
    for d in (start, *start.parents):
        dot_git = d / ".git"
        try:
            if dot_git.is_dir():
                return d
            if dot_git.is_file():
                return _root_from_gitfile(d, dot_git) or d
        except OSError:
            continue
    return start


def _root_from_gitfile(worktree: Path, gitfile: Path) -> Path | None:
    """A linked worktree's `.git` file says `gitdir: X`; X/commondir names the common dir (relative to X)."""
    text = gitfile.read_text(errors="replace").strip()
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text[len("gitdir:"):].strip())
    if not gitdir.is_absolute():
        gitdir = worktree / gitdir
    common = gitdir
    try:
        rel = (gitdir / "commondir").read_text(errors="replace").strip()
        if rel:
            common = Path(rel) if Path(rel).is_absolute() else gitdir / rel
    except OSError:
        pass  # a submodule or a plain gitdir link: its gitdir is the common dir
    common = Path(os.path.realpath(common))
    return common.parent if common.name == ".git" else common


def project_key(directory: str | os.PathLike[str] = ".") -> str:
    """8 hex digits of sha256 of the project root's real path: short, stable, the same for every worktree."""
    root = os.fsencode(os.path.realpath(find_project_root(directory)))
    return hashlib.sha256(root).hexdigest()[:KEY_LEN]


def _check_key(key: str) -> str:
    if not (isinstance(key, str) and _KEY_RE.fullmatch(key)):
        raise ValueError(f"project key {key!r} is invalid: it is {KEY_LEN} lowercase hex digits "
                         "(naming.project_key(directory) makes one)")
    return key


def validate_session(session: str) -> str:
    """Session ids go into file names and unit descriptions: keep them to a safe alphabet."""
    if not isinstance(session, str) or not _SESSION_RE.fullmatch(session):
        raise ValueError(
            f"session id {session!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit (or leave it out to have one generated)"
        )
    return session


def log_file_name(ticket: str, session: str, project: str | None = None) -> str:
    """Per-session log file name `<project key>.<escaped ticket>@<session>.log`.

    Unambiguous to parse back (the key is 8 hex digits, '@' is in neither an escaped ticket nor a session
    id) and free of '/', so it stays inside the log directory."""
    key = _check_key(project if project is not None else project_key("."))
    return f"{key}.{escape(ticket)}@{session}.log"


def parse_log_file_name(name: str) -> tuple[str, str, str] | None:
    """(project key, ticket, session) of a name log_file_name() makes, or None for any other name."""
    m = _LOG_RE.fullmatch(name)
    if m is None or not _SESSION_RE.fullmatch(m.group(3)):
        return None
    try:
        ticket = unescape_strict(m.group(2))
    except ValueError:
        return None
    if escape(ticket) != m.group(2):
        return None
    return m.group(1), ticket, m.group(3)


def max_ticket_length(session: str) -> int:
    """How many characters the ESCAPED ticket may have: the tighter of the unit name and the log file name."""
    in_log = MAX_FILE_NAME - len(f"{'0' * KEY_LEN}.@{session}.log")
    return min(MAX_TICKET_IN_UNIT, in_log)


def check_ticket_fits(ticket: str, session: str) -> None:
    """ValueError stating the real limit when the ticket makes a unit name or a log file name too long."""
    esc = escape(ticket)
    limit = max_ticket_length(session)
    if len(esc) > limit:
        which = "the unit name" if limit == MAX_TICKET_IN_UNIT else \
            f"the log file name (with this {len(session)}-character session id)"
        raise ValueError(
            f"ticket id is too long: escaped it is {len(esc)} characters and {which} allows {limit}; use a "
            "shorter ticket id (letters, digits, '_', '.', ':' take 1 character each, others 4)")
