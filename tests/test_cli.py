"""The CLI dispatcher: overrides after options, unknown options, one-line user errors."""

import pytest

from sftlab.cli import build_parser, main


def test_overrides_may_follow_options(tmp_path, capsys):
    code = main(["train", str(tmp_path / "missing.yaml"), "--resume", "train.lr=1e-4"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: config file not found: {tmp_path / 'missing.yaml'}"


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "run.yaml", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_every_command_module_registers_and_has_help():
    parser = build_parser()
    text = parser.format_help()
    for command in ["train", "data", "model", "eval", "generate", "chat", "serve", "export", "plan", "compare", "report"]:
        assert command in text
