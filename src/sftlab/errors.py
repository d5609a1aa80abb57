"""User-facing errors: one line that names the file, line or field at fault.

Anything raised as `SftlabError` is printed by the CLI as `error: <message>` with exit code 2 and
no traceback. Everything else is a bug and keeps its traceback.
"""


class SftlabError(Exception):
    """An error caused by the user's input (config, data, paths), with a one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line
