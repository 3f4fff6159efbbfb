"""A model of tf v1.1.10's module layout and the facts ralph-systemd relies on (tests/unit/test_tf_conformance.py
lists them and checks them against a real tf checkout when RALPH_TF_SRC is set). Written from those facts; not
tf's code. It lets CI drive `ralph_systemd.tf.install()` and the order of tf's calls without tf itself."""
