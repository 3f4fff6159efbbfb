"""Conformance with tf v1.1.10's Ralph loop, written from the facts (tf is not vendored: no license file).

FACTS says what ralph_systemd.tf relies on. Three kinds of tests:
- the facts against a real tf checkout, by reading its source (AST), when RALPH_TF_SRC points at one;
- install() against tests/tf_fakes/model, a model of tf's layout built from the same facts (always; CI);
- tests/integration/test_tf_model.py / test_tf_real.py run the loops against real scopes.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ralph_systemd.tf.install import BACKEND_FUNCTIONS, LOOP_MODULE, PATCHED_IN_LOOP

MODEL = Path(__file__).resolve().parents[1] / "tf_fakes" / "model"
TF_SRC = os.environ.get("RALPH_TF_SRC")

FACTS: dict[str, Any] = {
    # tf/ralph/__init__.py loads tf/ralph.py under this module name; the loop calls the names in ITS globals.
    "loop_module": "_ralph_main",
    # names tf/ralph.py imports, by module
    "imports": {
        "tf.ralph_completion": {"graceful_terminate_dispatch", "poll_dispatch_status", "wait_for_dispatch_completion",
                                "DispatchCompletionResult", "DispatchCompletionStatus",
                                "update_dispatch_tracking_status"},
        "tf.session_recovery": {"DEFAULT_SESSION_TTL_MS", "DispatchSessionState", "get_process_start_time",
                                "register_dispatch_session", "run_startup_recovery", "update_dispatch_session_status"},
    },
    # functions defined in tf/ralph.py that the loop calls and that we rebind there
    "loop_defines": {"run_ticket_dispatch", "ensure_pi", "resolve_execution_backend", "DispatchResult"},
    "valid_execution_backends": ("dispatch", "subprocess", "interactive"),  # no "systemd": we add it
    "completion_status_values": {"running", "completed", "timeout", "terminated", "error"},
    "completion_fields": ["ticket_id", "session_id", "status", "return_code", "pid", "duration_ms",
                          "termination_method", "error"],
    "dispatch_result_fields": ["session_id", "ticket_id", "status", "pid", "error"],
    "session_state_fields": ["session_id", "ticket_id", "pid", "process_start_time", "started_at", "worktree_path",
                             "status", "completed_at", "return_code"],
    "session_file": "dispatch-sessions.json",
    # RalphLogger's methods: no `warning`, yet tf's session_recovery / ralph_completion call logger.warning
    "logger_methods": {"debug", "info", "warn", "error"},
    "warning_callers": ("tf/session_recovery.py", "tf/ralph_completion.py"),
    # order of the backend calls in ralph_start: serial, then (after ensure_pi()) parallel
    "serial_order": ["run_ticket_dispatch", "wait_for_dispatch_completion", "update_dispatch_tracking_status",
                     "update_dispatch_session_status"],
    "parallel_order": ["ensure_pi", "run_ticket_dispatch", "graceful_terminate_dispatch", "poll_dispatch_status",
                       "update_dispatch_session_status"],
    # tf installs its SIGINT/SIGTERM handlers from inside its own run_ticket_dispatch (which we replace)
    "signal_handlers_installed_by": "_register_dispatch_child",
}


def test_the_switch_rebinds_exactly_what_the_loop_calls() -> None:
    assert LOOP_MODULE == FACTS["loop_module"]
    calls = set(FACTS["serial_order"]) | set(FACTS["parallel_order"])
    ours = set(BACKEND_FUNCTIONS) | {"ensure_pi"}
    assert ours <= calls  # everything we provide is something the loop calls ...
    tf_own = {"update_dispatch_tracking_status", "update_dispatch_session_status"}
    assert calls - ours == tf_own  # ... and the rest is tf's own bookkeeping, fed with tf's own types
    assert set(PATCHED_IN_LOOP) == ours | {"resolve_execution_backend", "run_startup_recovery"}


# -- the facts against a real tf checkout ------------------------------------------------------------------------

needs_tf = pytest.mark.skipif(not TF_SRC, reason="RALPH_TF_SRC does not point at a tf checkout")


def _tree(rel: str) -> ast.Module:
    assert TF_SRC is not None
    return ast.parse((Path(TF_SRC) / rel).read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def _func(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _fields(cls: ast.ClassDef) -> list[str]:
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def _called(node: ast.AST) -> list[tuple[int, str]]:
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            name = n.func.id if isinstance(n.func, ast.Name) else n.func.attr if isinstance(n.func, ast.Attribute) \
                else None
            if name:
                out.append((n.lineno, name))
    return sorted(out)


@needs_tf
def test_real_tf_loads_its_loop_as_ralph_main() -> None:
    assert TF_SRC is not None
    text = (Path(TF_SRC) / "tf/ralph/__init__.py").read_text()
    assert f'spec_from_file_location("{FACTS["loop_module"]}"' in text


@needs_tf
def test_real_tf_imports_these_names_into_its_loop() -> None:
    tree = _tree("tf/ralph.py")
    got: dict[str, set[str]] = {}
    for n in tree.body:
        if isinstance(n, ast.ImportFrom) and n.module in FACTS["imports"]:
            got.setdefault(n.module, set()).update(a.name for a in n.names)
    assert got == FACTS["imports"]
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert FACTS["loop_defines"] <= defined


@needs_tf
def test_real_tf_types_and_registry_format() -> None:
    comp = _tree("tf/ralph_completion.py")
    assert _fields(_class(comp, "DispatchCompletionResult")) == FACTS["completion_fields"]
    enum_values = {n.value.value for n in _class(comp, "DispatchCompletionStatus").body
                   if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    assert enum_values == FACTS["completion_status_values"]
    assert _fields(_class(_tree("tf/ralph.py"), "DispatchResult")) == FACTS["dispatch_result_fields"]
    rec = _tree("tf/session_recovery.py")
    assert _fields(_class(rec, "DispatchSessionState")) == FACTS["session_state_fields"]
    assert TF_SRC is not None
    assert f'"{FACTS["session_file"]}"' in (Path(TF_SRC) / "tf/session_recovery.py").read_text()


@needs_tf
def test_real_tf_logger_lacks_warning_that_tf_itself_calls() -> None:
    cls = _class(_tree("tf/logger.py"), "RalphLogger")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert FACTS["logger_methods"] <= methods and "warning" not in methods
    for rel in FACTS["warning_callers"]:
        assert "warning" in {name for _, name in _called(_tree(rel))}, rel


@needs_tf
def test_real_tf_rejects_systemd_and_checks_for_pi_on_path() -> None:
    tree = _tree("tf/ralph.py")
    valid = next(n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "VALID_EXECUTION_BACKENDS" for t in n.targets))
    assert ast.literal_eval(valid.value) == FACTS["valid_execution_backends"]
    assert "which" in {name for _, name in _called(_func(tree, "ensure_pi"))}
    register = _func(tree, FACTS["signal_handlers_installed_by"])
    assert "_install_dispatch_signal_handlers" in {name for _, name in _called(register)}
    assert FACTS["signal_handlers_installed_by"] in {name for _, name in _called(_func(tree, "run_ticket_dispatch"))}


@needs_tf
def test_real_tf_calls_the_backend_in_this_order() -> None:
    calls = _called(_func(_tree("tf/ralph.py"), "ralph_start"))
    split = next(line for line, name in calls if name == "ensure_pi")
    for part, order in ((calls, FACTS["serial_order"]), ([c for c in calls if c[0] >= split], FACTS["parallel_order"])):
        at = 0  # each call comes (at least once) after the previous one
        for name in order:
            at = next((line for line, n in part if n == name and line >= at), -1)
            assert at >= 0, (name, order)


# -- install() against the model ---------------------------------------------------------------------------------

def _drop_tf_modules() -> None:
    for name in list(sys.modules):
        if name == "tf" or name.startswith("tf.") or name == LOOP_MODULE:
            del sys.modules[name]


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The model of tf imported as `tf`, with ralph_systemd's backend installed; undone afterwards."""
    from ralph_systemd.tf import install, uninstall
    _drop_tf_modules()
    monkeypatch.syspath_prepend(str(MODEL))
    install(handle_signals=False)
    try:
        yield sys.modules[LOOP_MODULE]
    finally:
        uninstall()
        _drop_tf_modules()


def test_the_model_is_built_from_the_facts() -> None:
    _drop_tf_modules()
    sys.path.insert(0, str(MODEL))
    try:
        import tf.ralph
        loop = sys.modules[LOOP_MODULE]
        comp = sys.modules["tf.ralph_completion"]
        rec = sys.modules["tf.session_recovery"]
        for mod, names in FACTS["imports"].items():
            for name in names:
                assert getattr(loop, name) is getattr(sys.modules[mod], name)
        assert [f.name for f in dataclasses.fields(comp.DispatchCompletionResult)] == FACTS["completion_fields"]
        assert {s.value for s in comp.DispatchCompletionStatus} == FACTS["completion_status_values"]
        assert [f.name for f in dataclasses.fields(loop.DispatchResult)] == FACTS["dispatch_result_fields"]
        assert [f.name for f in dataclasses.fields(rec.DispatchSessionState)] == FACTS["session_state_fields"]
        assert not hasattr(sys.modules["tf.logger"].RalphLogger, "warning")
        assert tf.ralph.main is loop.main
    finally:
        sys.path.remove(str(MODEL))
        _drop_tf_modules()


def test_install_rebinds_the_loop_module_not_just_the_package(model: ModuleType) -> None:
    from ralph_systemd.tf import install
    backend = install()  # idempotent: the same backend
    assert install() is backend
    for name in BACKEND_FUNCTIONS:
        fn = getattr(model, name)
        assert getattr(fn, "__self__", None) is backend, name  # in _ralph_main, where the loop looks them up
        assert getattr(sys.modules["tf.ralph"], name) == fn


def test_uninstall_gives_tf_back(model: ModuleType) -> None:
    from ralph_systemd.tf import uninstall
    uninstall()
    assert getattr(model.run_ticket_dispatch, "__self__", None) is None
    assert not hasattr(sys.modules["tf.logger"].RalphLogger, "warning")


def test_systemd_is_an_accepted_execution_backend(model: ModuleType) -> None:
    logger = sys.modules["tf.logger"].create_logger()
    assert model.resolve_execution_backend(None, {"executionBackend": "systemd"}, logger) == "dispatch"
    assert model.resolve_execution_backend(None, {}, logger) == "dispatch"
    assert model.resolve_execution_backend("subprocess", {}, logger) == "subprocess"
    assert any("outside ralph-systemd's scopes" in m for _, m in logger.lines)


def test_tfs_logger_gets_the_warning_tf_calls(model: ModuleType, tmp_path: Path) -> None:
    logger = sys.modules["tf.logger"].create_logger()
    # tf's own "session not found" branch: an AttributeError before install()
    assert sys.modules["tf.session_recovery"].update_dispatch_session_status(tmp_path, "nope", "failed",
                                                                            logger=logger) is False
    assert ("warn", "Session nope not found in state file for update") in logger.lines


def test_ensure_pi_honours_the_agent_command(model: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `pi` anywhere
    monkeypatch.delenv("RALPH_SYSTEMD_PI", raising=False)
    assert model.ensure_pi() is False
    monkeypatch.setenv("RALPH_SYSTEMD_PI", shutil.which("true", path="/usr/bin:/bin") or "/bin/true")
    assert model.ensure_pi() is True


def test_answers_use_tfs_own_types(model: ModuleType) -> None:
    comp = sys.modules["tf.ralph_completion"]
    c = model.wait_for_dispatch_completion(model.DispatchResult("s", "T-1", "launched", pid=None), "T-1")
    assert type(c) is comp.DispatchCompletionResult and c.status == comp.DispatchCompletionStatus.ERROR
    r = model.run_ticket_dispatch("bad id;", "/tf", "", False)
    assert type(r) is model.DispatchResult and r.status == "failed" and "Invalid ticket ID" in (r.error or "")
    # a pid that is not ours is never success (tf's parallel loop counts (False, None) as success)
    assert model.poll_dispatch_status(os.getpid()) == (False, 255)
