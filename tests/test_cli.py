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
    assert capsys.readouterr().err == "error: sftlab train: unrecognized argument --bogus; see sftlab train --help\n"


@pytest.mark.parametrize("argv, line", [
    # argparse printed its usage and "sftlab: error: argument COMMAND: invalid choice: 'trian' (choose from ...)"
    (["trian", "x.yaml"], "error: sftlab: unknown command 'trian'; did you mean 'train'?"),
    (["model", "pul"], "error: sftlab model: unknown command 'pul'; did you mean 'pull'?"),
    (["train", "x.yaml", "--overwirte"], "error: sftlab train: unrecognized argument --overwirte; did you mean "
                                          "'--overwrite'?"),
    (["data", "stats", "f.jsonl", "--maks", "all"], "error: sftlab data stats: unrecognized argument --maks "
                                                     "(followed by all); did you mean '--mask'?"),
    (["eval", "runs/x", "--task", "label"], "error: sftlab eval: unknown --task 'label'; did you mean 'labels'?"),
    (["zzz"], "error: sftlab: unknown command 'zzz'; choose from data, model, policy, board, chat, compare, demo, "
              "eval, export, generate, plan, report, serve, train"),
])
def test_a_misspelt_command_option_or_choice_is_one_line_with_a_suggestion(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and capsys.readouterr().err == line + "\n"


def test_every_command_module_registers_and_has_help():
    parser = build_parser()
    text = parser.format_help()
    for command in ["train", "data", "model", "eval", "generate", "chat", "serve", "export", "plan", "compare", "report"]:
        assert command in text


def test_library_messages_an_offline_user_cannot_act_on_are_dropped(caplog):
    """bitsandbytes' failed hub-kernel fetch (on AVX-512 BF16 CPUs), the kernels package's offline note and the
    FutureWarning peft triggers in transformers are not shown; other messages of the same loggers still are."""
    import logging
    import warnings

    from sftlab.cli import quiet_libraries

    quiet_libraries()
    quiet_libraries()  # idempotent: one filter per logger
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(bnb.filters) == 1
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "offline")
        logging.getLogger("kernels._internals.hf_hub").warning(
            "Skipping publisher trust check for 'kernels-community/x' because Hugging Face Hub is in offline mode.")
        bnb.warning("something else")
    assert [record.getMessage() for record in caplog.records] == ["something else"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("another FutureWarning", FutureWarning)
    assert [str(w.message) for w in caught] == ["another FutureWarning"]


def test_transformers_token_length_warning_is_dropped(capfd):
    """sftlab checks lengths itself (data.max_length, serve's context): the tokenizer's warning is noise."""
    from sftlab.cli import quiet_libraries
    from sftlab.models.tiny import make_tokenizer

    tokenizer = make_tokenizer("chatml")
    tokenizer.model_max_length = 8
    quiet_libraries()
    assert len(tokenizer("hello world " * 20)["input_ids"]) > 8
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`sftlab data stats FILE | head -0`: no BrokenPipeError traceback, exit status 141 as after a SIGPIPE."""
    import json
    import subprocess
    import sys

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n"
                            for i in range(20)), encoding="utf-8")
    child = subprocess.Popen([sys.executable, "-m", "sftlab", "data", "stats", str(data)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before sftlab writes
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141, stderr
    assert stderr == ""


def test_a_missing_config_names_only_what_is_required(capsys):
    # argparse listed the optional overrides too: "the following arguments are required: config, key.sub=value"
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: sftlab train: the following arguments are required: config; "
                                       "see sftlab train --help\n")
