"""What the `sftlab data` handlers (`sftlab.datawork.handlers`) share: the checks that no output overwrites an
input, reading the input and `--eval` files with the command's `--format` / `--columns`, the tokenizer of
`--tokenizer` or `--config`, and writing an output with its report (`finish`).
"""

from __future__ import annotations

from pathlib import Path

from sftlab.data.option_names import parse_columns
from sftlab.datawork.records import check_output_parent, dropped_fields_note, load_examples, save_examples
from sftlab.datawork.report import Report, report_paths, report_stem
from sftlab.errors import SftlabError


def check_distinct(output: str | Path, *inputs, what: str = "output", report: bool = True) -> None:
    """Fail when the output path (`what` names it in the message), or with `report` a report written beside it
    (`report_stem`), is one of the inputs (inputs are never changed), or would be written inside a file
    (`records.check_output_parent`)."""
    check_output_parent(output)
    targets = [Path(output)] + (report_paths(report_stem(output)) if report else [])
    for target in targets:
        for source in inputs:
            if source and Path(source).resolve() == target.resolve():
                whose = what if target == Path(output) else f"the report {target} of {what}"
                raise SftlabError(f"{output}: {whose} would overwrite the input file {source}; choose another path")


def read_input(args, path=None) -> list[dict]:
    return load_examples(path or args.input, args.format, args.stage, parse_columns(args.columns))


def check_eval_files(args) -> None:
    """Refuse an `--eval` file that is the input or the output: every example would match itself and be removed."""
    for path in args.eval or []:
        for role, other in (("the input", args.input), ("the output", args.output)):
            if Path(path).resolve() == Path(other).resolve():
                raise SftlabError(f"--eval {path}: is {role}; an evaluation set must be another file (every example "
                                  "would match itself and be removed)")


def read_eval_sets(args) -> dict[str, list[dict]]:
    """The `--eval` files, read with `--eval-format` / `--eval-columns` (default: the input's `--format` /
    `--columns`; `--eval-columns` with no value maps no column); errors name those two options."""
    fmt = args.eval_format or args.format
    columns = parse_columns(args.columns if args.eval_columns is None else args.eval_columns)
    eval_sets = {}
    for path in args.eval or []:
        try:
            eval_sets[str(path)] = load_examples(path, fmt, args.stage, columns, ("--eval-format", "--eval-columns"))
        except SftlabError as exc:
            if args.eval_format or args.eval_columns is not None or not Path(path).is_file():
                raise
            raise SftlabError(f"{exc} (--eval files are read with --format and --columns unless --eval-format or "
                              "--eval-columns is given)") from None
    return eval_sets


def load_tokenizer_dir(path: str | None, config: str | None = None):
    """The tokenizer of `--tokenizer DIR`, else of the run config's model (`--config run.yaml`), else None."""
    if path is None and config is not None:
        from sftlab.models.load import load_tokenizer

        return load_tokenizer(run_config(config).model)
    if path is None:
        return None
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise SftlabError(f"--tokenizer {path}: not a local directory")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def run_config(path: str):
    """The validated run config at `path` (its train.max_length, data.template and data.mask set defaults)."""
    from sftlab.config.load import load_config

    return load_config(path)


def finish(report: Report, output: str | Path, examples: list[dict], fmt: str | None, extra: list[str] = ()) -> int:
    save_examples(output, examples, fmt)
    note = dropped_fields_note(examples, fmt)
    if note:
        report.note(note)
    report.finish(len(examples), [str(output), *extra])
    paths = report.write(report_stem(output))
    print(report.summary())
    print(f"  report {paths[1]}")
    return 0
