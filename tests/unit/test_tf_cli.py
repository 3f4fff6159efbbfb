"""`ralph-systemd tf ...` (ralph_systemd.tf.cli.main) before anything runs: usage, a missing tf, a bad config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ralph_systemd.tf.cli import main
from ralph_systemd.text import terminal_safe

MODEL = Path(__file__).resolve().parents[1] / "tf_fakes" / "model"


def _drop_tf_modules() -> None:
    for name in list(sys.modules):
        if name == "tf" or name.startswith("tf.") or name == "_ralph_main":
            del sys.modules[name]


def test_no_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "usage: ralph-systemd tf" in out.err


def test_help_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "ralph-systemd tf ralph start --parallel 2" in capsys.readouterr().out


def test_without_tf_it_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tf", None)  # import tf -> ImportError
    assert main(["ralph", "start"]) == 1
    err = capsys.readouterr().err
    assert "tf (pi-ticketflow) is not importable" in err and err.count("\n") == 1


@pytest.mark.parametrize("section, words", [
    ({"agentComand": ["pi"]}, "unknown key 'agentComand'"),
    ({"graceMs": "5s"}, "systemd.graceMs must be a number > 0"),
    ({"maxRuntimeMs": 0}, "systemd.maxRuntimeMs must be a number > 0"),
])
def test_a_bad_systemd_section_stops_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str],
                                                            section: dict[str, object], words: str) -> None:
    ralph_dir = tmp_path / ".tf" / "ralph"
    ralph_dir.mkdir(parents=True)
    (ralph_dir / "config.json").write_text(json.dumps({"executionBackend": "systemd", "systemd": section}))
    monkeypatch.chdir(tmp_path)
    _drop_tf_modules()
    monkeypatch.syspath_prepend(str(MODEL))
    try:
        assert main(["ralph", "start"]) == 2
        err = capsys.readouterr().err
        assert words in err and str(ralph_dir / "config.json") in err and err.count("\n") == 1
        assert sorted(p.name for p in ralph_dir.iterdir()) == ["config.json"]  # nothing created
        assert "_ralph_main" not in sys.modules  # tf's loop was not even loaded, let alone switched
    finally:
        _drop_tf_modules()


def test_session_output_reaches_the_terminal_escaped() -> None:
    assert terminal_safe("ok\tline\n\x1b[2J\x07done\r") == "ok\tline\n\\x1b[2J\\x07done\\r"
