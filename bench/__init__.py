"""ralph-systemd's benchmark: not part of the package (not in the wheel). Run it from the checkout:
`./dev bench`, or `python -m bench` where a user manager is reachable. See bench/run.py."""
