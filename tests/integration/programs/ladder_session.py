#!/usr/bin/env python3
"""A session that reports, with CLOCK_MONOTONIC timestamps, every step of the kill ladder it sees.

    ladder_session.py eof    exits 0 when its stdin reaches EOF
    ladder_session.py term   ignores EOF, exits 143 on SIGTERM
    ladder_session.py kill   ignores EOF and SIGTERM: only SIGKILL ends it
Each event is a line "EVENT <pid> <monotonic>" on stdout (the session's log).
"""
import os
import signal
import sys
import time

mode = sys.argv[1]


def say(event: str) -> None:
    print(f"{event} {os.getpid()} {time.monotonic():.6f}", flush=True)


def on_term(signum: int, frame: object) -> None:
    say("TERM")
    if mode == "term":
        sys.exit(143)


signal.signal(signal.SIGTERM, on_term)
say("START")
while sys.stdin.read(4096):
    pass
say("EOF")
if mode == "eof":
    sys.exit(0)
while True:
    signal.pause()
