"""The "systemd" section of Ralph's config (`.tf/ralph/config.json`), validated, and the DispatchSpec it makes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ralph_systemd.spec import DEFAULT_SLICE, NESTED_AGENT_ENV, default_eof_grace, STDIN_NULL, STDIN_PIPE, DispatchSpec

BACKEND_NAME = "systemd"
CONFIG_SECTION = "systemd"
ENV_AGENT = "RALPH_SYSTEMD_PI"
# tf's timeout_ms=0 means "no limit"; a scope that nobody stops must still end: four hours, then systemd stops it.
DEFAULT_MAX_RUNTIME_MS = 4 * 3600 * 1000


@dataclass(frozen=True)
class BackendConfig:
    """The "systemd" section of Ralph's config, validated."""

    agent_command: tuple[str, ...] = ("pi",)
    log_dir: str | None = None
    grace_ms: float = 5000.0
    eof_grace_ms: float | None = None
    idle_timeout_ms: float = 0.0
    max_runtime_ms: float = float(DEFAULT_MAX_RUNTIME_MS)
    slice: str = DEFAULT_SLICE
    memory_max: int | None = None
    tasks_max: int | None = None
    cpu_quota: float | None = None
    inherit_tail_bytes: int = 64 * 1024
    # tf's own backend gave pi the terminal; a pipe that stays open would hang `pi -p` (it reads piped stdin
    # to EOF before it starts), so the agent's stdin is /dev/null unless the config asks for "pipe".
    stdin: str = STDIN_NULL
    unset_env: tuple[str, ...] = NESTED_AGENT_ENV

    def agent(self) -> tuple[str, ...]:
        """The agent's argv prefix: $RALPH_SYSTEMD_PI (a program) if set, else agentCommand."""
        env = os.environ.get(ENV_AGENT)
        return (env,) if env else self.agent_command


_KEYS = {"agentCommand": "agent_command", "logDir": "log_dir", "graceMs": "grace_ms", "eofGraceMs": "eof_grace_ms",
         "idleTimeoutMs": "idle_timeout_ms", "maxRuntimeMs": "max_runtime_ms", "slice": "slice",
         "memoryMax": "memory_max", "tasksMax": "tasks_max", "cpuQuota": "cpu_quota",
         "inheritTailBytes": "inherit_tail_bytes", "stdin": "stdin", "unsetEnv": "unset_env"}


def _number(key: str, value: Any, *, integer: bool = False, positive: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < 0 or (positive and value == 0):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"Ralph config {CONFIG_SECTION}.{key} must be {kind} {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")
    return value


def parse_config(section: Mapping[str, Any]) -> BackendConfig:
    """Validate the "systemd" section of Ralph's config; ValueError naming the first bad key."""
    if not isinstance(section, Mapping):
        raise ValueError(f"Ralph config {CONFIG_SECTION!r} must be an object, not {type(section).__name__}")
    kw: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r} in Ralph config section {CONFIG_SECTION!r}; "
                             f"known keys: {', '.join(sorted(_KEYS))}")
        if key == "agentCommand":
            argv = [value] if isinstance(value, str) else value
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
                raise ValueError(f"Ralph config {CONFIG_SECTION}.agentCommand must be a program path or a "
                                 f"non-empty list of strings (no shell is used), got {value!r}")
            value = tuple(argv)
        elif key == "stdin":
            if value not in (STDIN_NULL, STDIN_PIPE):
                raise ValueError(f"Ralph config {CONFIG_SECTION}.stdin must be \"null\" (the agent's stdin is "
                                 f"/dev/null) or \"pipe\" (open until the stop's EOF step), got {value!r}")
        elif key == "unsetEnv":
            if not isinstance(value, list) or not all(isinstance(v, str) and v and "=" not in v for v in value):
                raise ValueError(f"Ralph config {CONFIG_SECTION}.unsetEnv must be a list of variable names, got "
                                 f"{value!r}")
            value = tuple(value)
        elif key in ("logDir", "slice"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"Ralph config {CONFIG_SECTION}.{key} must be a non-empty string, got {value!r}")
        elif key in ("memoryMax", "tasksMax", "inheritTailBytes"):
            _number(key, value, integer=True, positive=key != "inheritTailBytes")
        else:
            _number(key, value, positive=key in ("graceMs", "cpuQuota", "maxRuntimeMs"))
        kw[_KEYS[key]] = value
    cfg = BackendConfig(**kw)
    if cfg.eof_grace_ms is not None and cfg.stdin != STDIN_PIPE:
        raise ValueError(f"Ralph config {CONFIG_SECTION}.eofGraceMs applies only with \"stdin\": \"pipe\" (the "
                         "agent's stdin is /dev/null otherwise, so a stop starts with SIGTERM): remove it, or add "
                         "\"stdin\": \"pipe\"")
    try:  # the rest (eofGraceMs < graceMs, slice name, ...) exactly as a launch would check it
        make_spec(cfg, ["true"], "config-check", None, None, 0)
    except ValueError as e:
        raise ValueError(f"Ralph config section {CONFIG_SECTION!r}: {e}") from None
    return cfg


def load_project_config(project_root: Path) -> BackendConfig:
    """The "systemd" section of `<project_root>/.tf/ralph/config.json` (defaults when the file or the section
    is missing). ValueError naming the file and the problem when it is unreadable or wrong."""
    path = project_root / ".tf" / "ralph" / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return BackendConfig()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix it or remove it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    try:
        return parse_config(data.get(CONFIG_SECTION, {}))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _eof_grace_s(cfg: BackendConfig) -> float:
    """The EOF step's grace: only a "pipe" stdin has one (parse_config refuses eofGraceMs with another)."""
    if cfg.stdin != STDIN_PIPE:
        return 0.0
    grace = cfg.grace_ms / 1000
    return cfg.eof_grace_ms / 1000 if cfg.eof_grace_ms is not None else default_eof_grace(grace)


def ladder_times(cfg: BackendConfig, timeout_ms: float) -> tuple[float, float]:
    """(RuntimeMaxSec, eof_grace) in seconds for a dispatch tf gives `timeout_ms` (0 = tf's "none": our
    max_runtime_ms). EOF (stdin "pipe" only) comes inside the budget, so SIGTERM lands at timeout_ms, where tf
    sends it."""
    budget = (timeout_ms if timeout_ms and timeout_ms > 0 else cfg.max_runtime_ms) / 1000
    eof = min(_eof_grace_s(cfg), budget / 4)
    return budget - eof, eof


def make_spec(cfg: BackendConfig, argv: Sequence[str], ticket: str, cwd: str | os.PathLike[str] | None,
              session: str | None, timeout_ms: float, log_dir: str | os.PathLike[str] | None = None) -> DispatchSpec:
    """The DispatchSpec of one tf dispatch: every one has a RuntimeMaxSec (see ladder_times)."""
    runtime, eof = ladder_times(cfg, timeout_ms)
    return DispatchSpec(
        argv=argv, ticket=ticket, cwd=cwd if cwd is not None else os.getcwd(), session=session,
        timeout=runtime, idle_timeout=cfg.idle_timeout_ms / 1000 if cfg.idle_timeout_ms else None,
        grace=cfg.grace_ms / 1000, eof_grace=eof, stdin=cfg.stdin, unset_env=cfg.unset_env,
        log_dir=log_dir if log_dir is not None else cfg.log_dir, slice=cfg.slice, memory_max=cfg.memory_max,
        tasks_max=cfg.tasks_max, cpu_quota=cfg.cpu_quota)
