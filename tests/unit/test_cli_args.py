"""The command line's input handling, on the host (no user manager needed): every bad input gets one clear
line on stderr and a usage exit code before anything is started."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from ralph_systemd import cli
from ralph_systemd.cli.run import default_ticket
from ralph_systemd.naming import unit_name_for_ticket
from ralph_systemd.units import install_units, shipped_units

REPO = Path(__file__).resolve().parents[2]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        code = cli.main(argv, out, err)
    except SystemExit as e:  # argparse's own exits (--help, usage errors) write to sys.stdout/stderr
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, err.getvalue() + captured.err


@pytest.mark.parametrize("argv, needle", [
    (["run", "--bogus", "--", "true"], "unrecognized arguments: --bogus"),
    (["run", "--timeout", "5x", "--", "true"], "unknown time unit 'x'"),
    (["run", "--timeout", "soon", "--", "true"], "'soon' is not a time span"),
    (["run", "--grace", "-1", "--", "true"], "negative"),
    (["run", "--memory-max", "lots", "--", "true"], "'lots' is not a size"),
    (["run", "--tasks-max", "0", "--", "true"], "positive whole number"),
    (["run", "--cpu-quota", "fast", "--", "true"], "not a CPU quota"),
    (["run"], "no command given"),
    (["run", "--"], "no command given"),
    (["run", "--ticket", "", "--", "true"], "ticket id is empty"),
    (["run", "--ticket", "a\nb", "--", "true"], "control character"),
    (["run", "--session", "bad session", "--", "true"], "session id"),
    (["run", "--timeout", "0", "--", "true"], "timeout must be > 0"),
    (["run", "--detach", "--idle-timeout", "5min", "--", "true"], "cannot be used with --detach"),
    (["status", ""], "ticket id is empty"),
    (["logs", "x", "-n", "many"], "not a whole number"),
    (["stop"], "give one TICKET or UNIT to stop, or --all"),
    (["gc", "--older-than", "old"], "'old' is not a time span"),
    ([], "required: COMMAND"),
    (["run", "--timeout", "-1s", "--", "true"], "time span '-1s' is negative"),
    (["run", "--memory-max", "-5M", "--", "true"], "size '-5M' is negative"),
    (["run", "--ticket", "-rf", "--", "true"], "ticket id '-rf' starts with '-'"),
    (["run", "-t", "-rf", "--", "true"], "ticket id '-rf' starts with '-'"),
    (["run", "--memory-max", "16E", "--", "true"], "too large"),
    (["run", "--tasks-max", "99999999999999999999999", "--", "true"], "too large"),
    (["run", "--cpu-quota", "1e30%", "--", "true"], "more than 100000%"),
    (["run", "--ticket", "x" * 240, "--", "true"], "log file name (with this 16-character session id) allows 225"),
    (["logs", "x", "-n", "-5"], "positive whole number"),
    (["status", "ralph-../x.scope"], "neither a ticket id nor a ralph-systemd unit name"),
    (["status", "ralph-*.scope"], "neither a ticket id nor a ralph-systemd unit name"),
    (["stop", "ralph-x y.scope"], "neither a ticket id nor a ralph-systemd unit name"),
    (["logs", "ralph-.scope"], "neither a ticket id nor a ralph-systemd unit name"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--stdin", "tty", "--", "true"], "'tty' is not a stdin policy: give null, pipe, text:TEXT or file:PATH"),
    (["run", "--stdin", "file:", "--", "true"], "file: needs a path"),
    (["run", "--stdin", "file:/nonexistent/prompt.txt", "--", "true"], "stdin file /nonexistent/prompt.txt: No such"),
    (["run", "--stdin", "file:/", "--", "true"], "stdin file / is a directory"),
    (["run", "--detach", "--stdin", "pipe", "--", "true"], "--stdin pipe needs us attached"),
])
def test_bad_input_is_one_line_on_stderr(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, err)
    assert out == ""
    assert err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err


def test_stop_rejects_a_ticket_and_all_together(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["stop", "x", "--all"], capsys)
    assert code == 2 and "not both" in err


def test_help_everywhere_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ([], ["run"], ["ls"], ["status"], ["stop"], ["logs"], ["gc"], ["install-units"]):
        code, out, _ = run_cli([*sub, "--help"], capsys)
        assert code == 0
        assert "exit codes:" in out and "124" in out and "125" in out and "128+N" in out
    _, out, _ = run_cli(["run", "--help"], capsys)
    assert "<program>.<6 hex digits>" in out and "--detach" in out and "1h 30min" in out


def test_default_ticket_is_readable_unique_and_needs_no_escaping() -> None:
    tickets = {default_ticket(["/usr/bin/pi", "-p"]) for _ in range(50)}
    assert len(tickets) == 50
    for t in tickets:
        assert re.fullmatch(r"pi\.[0-9a-f]{6}", t)
        assert unit_name_for_ticket(t, "0123abcd") == f"ralph-0123abcd-{t}.scope"
    assert re.fullmatch(r"my_tool\.[0-9a-f]{6}", default_ticket(["./my-tool"]))
    assert re.fullmatch(r"run\.[0-9a-f]{6}", default_ticket([".."]))


def test_shipped_slice_is_the_repositorys(tmp_path: Path) -> None:
    assert shipped_units() == {"ralph.slice": (REPO / "units" / "ralph.slice").read_bytes()}
    text = (REPO / "units" / "ralph.slice").read_text()
    assert "\n[Slice]\n" in text and "\nDescription=" in text
    for limit in ("#MemoryMax=", "#TasksMax=", "#CPUQuota="):
        assert limit in text  # offered, commented out


def test_install_units_writes_the_files_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "systemd" / "user"
    code, out, err = run_cli(["install-units", "--dir", str(dest), "--no-reload"], capsys)
    assert (code, err) == (0, "")
    assert out == f"installed {dest / 'ralph.slice'}\n"
    assert (dest / "ralph.slice").read_bytes() == (REPO / "units" / "ralph.slice").read_bytes()
    assert oct((dest / "ralph.slice").stat().st_mode & 0o777) == "0o644"
    assert [i.changed for i in install_units(dest)] == [False]
    code, out, _ = run_cli(["install-units", "--dir", str(dest), "--no-reload"], capsys)
    assert (code, out) == (0, "")  # nothing to do, nothing said (not a terminal)
    assert sorted(p.name for p in dest.iterdir()) == ["ralph.slice"]  # no temporary files left


def test_install_units_into_an_unwritable_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(["install-units", "--dir", str(blocker / "sub"), "--no-reload"], capsys)
    assert code == 1 and err.count("\n") == 1 and "pass --dir" in err


@pytest.mark.parametrize("argv, expected", [(["run", "--", "true"], 125), (["ls"], 1), (["status", "t"], 1),
                                            (["stop", "--all"], 1), (["gc"], 1)])
def test_no_user_bus_is_one_line_with_the_fix(argv: list[str], expected: int, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    code, out, err = run_cli(argv, capsys)
    assert code == expected
    assert out == "" and err.count("\n") == 1
    assert "user bus" in err and "loginctl enable-linger" in err


def test_tf_passes_everything_after_it_to_tf(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import types
    seen: list[list[str]] = []
    fake = types.ModuleType("ralph_systemd.tf.cli")
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ralph_systemd.tf.cli", fake)
    assert run_cli(["tf", "ralph", "start", "--parallel", "2"], capsys)[0] == 7
    assert run_cli(["-v", "tf", "--help"], capsys)[0] == 7
    assert run_cli(["tf", "--", "--timeout", "-1s"], capsys)[0] == 7
    assert seen == [["ralph", "start", "--parallel", "2"], ["--help"], ["--timeout", "-1s"]]


def test_tf_without_its_module_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "ralph_systemd.tf.cli", None)  # makes the import fail
    code, out, err = run_cli(["tf", "ralph", "start"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "tf integration cannot be loaded" in err


def test_library_warnings_are_one_clean_line_each(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    def noisy(args: object, out: object, err: object) -> int:
        logging.getLogger("ralph_systemd.bus").warning("D-Bus call %s failed\ntransiently: \x1b[2J", "GetUnit")
        logging.getLogger("ralph_systemd.bus").info("retry succeeded")  # below warning: not shown
        for unit in ("a.mount", "b.mount", "c.mount"):  # a burst of one kind: shown once, then counted
            logging.getLogger("ralph_systemd.supervisor").warning("ignored a signal for %s", unit)
        return 0
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["ls"].set_defaults(func=noisy)  # type: ignore[union-attr]
    code, out, err = run_cli(["ls"], capsys)
    assert code == 0 and out == ""
    assert err == ("ralph-systemd ls: warning: D-Bus call GetUnit failed transiently: \\x1b[2J\n"
                   "ralph-systemd ls: warning: ignored a signal for a.mount\n"
                   "ralph-systemd ls: warning: 2 more warning(s) like the above not shown (-v shows them)\n")


def test_a_sessions_output_on_a_terminal_keeps_colours_and_escapes_the_rest() -> None:
    import io

    from ralph_systemd.cli.format import TerminalSink
    from ralph_systemd.text import terminal_safe
    text = "ok \x1b[1;32mgreen\x1b[0m\r\n\x1b]0;title\x07\x1b[2J a\rb \u202eevil\t\x85 é\n"
    assert terminal_safe(text) == ("ok \x1b[1;32mgreen\x1b[0m\r\n\\x1b]0;title\\x07\\x1b[2J a\\rb \\u202eevil\t"
                                   "\\x85 é\n")
    raw = io.BytesIO()
    sink = TerminalSink(raw)
    data = "é\x1b[2J".encode()
    for i in range(len(data)):  # byte by byte: a character split between reads stays whole
        sink.write(data[i:i + 1])
    sink.flush()
    assert raw.getvalue().decode() == "é\\x1b[2J"
