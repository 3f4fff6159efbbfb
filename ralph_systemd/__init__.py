"""ralph-systemd: run long-lived, unattended child sessions in transient systemd user scopes."""

__version__ = "0.1.0"
