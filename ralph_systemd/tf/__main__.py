"""python -m ralph_systemd.tf <tf's own arguments>: the same as `ralph-systemd tf ...`."""

import sys

from ralph_systemd.tf.cli import main

sys.exit(main(sys.argv[1:]))
