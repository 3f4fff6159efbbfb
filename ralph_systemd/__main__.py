"""`python -m ralph_systemd` is the `ralph-systemd` command."""

from ralph_systemd.cli import main

raise SystemExit(main())
