"""Model of tf.logger.RalphLogger: debug/info/warn/error(msg, **context) to stderr; no `warning`."""

from __future__ import annotations

import sys
from typing import Any


class RalphLogger:
    def __init__(self, **context: Any) -> None:
        self.context = context
        self.lines: list[tuple[str, str]] = []

    def with_context(self, **kw: Any) -> RalphLogger:
        return RalphLogger(**{**self.context, **kw})

    def _log(self, level: str, msg: str, **extra: Any) -> None:
        self.lines.append((level, msg))
        print(f"{level.upper()} | {msg}", file=sys.stderr, flush=True)

    def debug(self, msg: str, **extra: Any) -> None:
        self._log("debug", msg)

    def info(self, msg: str, **extra: Any) -> None:
        self._log("info", msg)

    def warn(self, msg: str, **extra: Any) -> None:
        self._log("warn", msg)

    def error(self, msg: str, **extra: Any) -> None:
        self._log("error", msg)


def create_logger(**context: Any) -> RalphLogger:
    return RalphLogger(**context)
