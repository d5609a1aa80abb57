"""The command-line names of the config keys that `sftlab.data.formats` names in its error messages, and the
`--columns canonical=column` options read into a data.columns mapping.

The formats' messages name the run config's keys (data.format, data.columns, data.columns.KEY, train.stage),
which is right for `sftlab train`; commands that take those settings as options (`sftlab eval`, the
`sftlab data` commands) re-raise the messages with their option names instead:

    with option_errors("--format", "--columns"):
        examples = to_canonical(rows, fmt, stage, columns)

    parse_columns(["label=category"])    # {"label": "category"}: `sftlab eval --columns`, the data commands' options
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from sftlab.errors import SftlabError


@contextmanager
def option_errors(format_option: str = "--format", columns_option: str = "--columns"):
    """Re-raise a `SftlabError` of `sftlab.data.formats` with the data commands' option names in place of the run
    config keys the trainer's messages use: data.format -> `format_option`, data.columns.label (of column
    'category') -> `columns_option label=category`, data.columns -> `columns_option`, train.stage -> --stage."""
    try:
        yield
    except SftlabError as exc:
        raise SftlabError(option_names(str(exc), format_option, columns_option)) from None


def option_names(message: str, format_option: str = "--format", columns_option: str = "--columns") -> str:
    """`message` with the config keys data.format, data.columns(.KEY) and train.stage named as options."""
    message = re.sub(r"column '([^']*)' \(data\.columns\.(\w+)\)", lambda m: f"column '{m[1]}' ({columns_option} "
                     f"{m[2]}={m[1]})", message)
    for key, option in ((r"data\.columns\.(\w+)", f"{columns_option} \\1=COLUMN"), (r"data\.columns", columns_option),
                        (r"data\.format", format_option), (r"train\.stage", "--stage")):
        message = re.sub(r"(?<![\w/.-])" + key + r"\b", option, message)
    return message


def parse_columns(items: list[str] | None) -> dict[str, str] | None:
    """['label=category', 'text=sentence'] -> {'label': 'category', 'text': 'sentence'}; None for no items."""
    columns = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SftlabError(f"--columns {item!r} must look like canonical=column (e.g. label=category)")
        columns[key.strip()] = value.strip()
    return columns or None
