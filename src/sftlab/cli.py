"""The `sftlab` command: discovers subcommands in `sftlab.commands` and runs one.

Each module in `sftlab/commands/` defines `register(registry)`; it adds its parsers with
`registry.top.add_parser(...)` or, for grouped commands, `registry.group("data").add_parser(...)`
and sets `func=handler`, where `handler(args) -> int | None`. Heavy imports (torch, transformers)
belong inside handlers so `sftlab --help` stays fast. User errors (`SftlabError`) print one line
and exit 2; Ctrl-C exits 130. The console script enters at `console`, which may first re-execute
`sftlab train` on jemalloc (train.allocator; `sftlab.jemalloc`); `main` runs a command in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import os
import pkgutil
import re
import sys

from sftlab.errors import SftlabError

GROUPS = {
    "data": "build, validate, clean, augment, balance, inspect and preview datasets",
    "model": "import, pull and list models; write tiny random test models",
    "policy": "the policy-push application",
}


_INVALID_CHOICE = re.compile(r"^argument (?P<arg>[^:]+): invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)$")


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: sftlab train: ...`, exit 2) and a suggestion for a misspelt command,
    choice or option, as every other bad input gets; subparsers are made of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {self._explain(message)}\n")

    def _explain(self, message: str) -> str:
        invalid = _INVALID_CHOICE.match(message)
        if invalid:
            choices = re.findall(r"'([^']*)'", invalid["choices"])
            what = "command" if invalid["arg"] in ("COMMAND", "SUBCOMMAND") else invalid["arg"]
            hint = _did_you_mean(invalid["given"], choices) or f"; choose from {', '.join(choices)}"
            return f"unknown {what} {invalid['given']!r}{hint}"
        if message.startswith("unrecognized arguments: "):
            bad = message.removeprefix("unrecognized arguments: ").split()
            options = [option for action in self._actions for option in action.option_strings]
            rest = f" (followed by {' '.join(bad[1:])})" if bad[1:] else ""
            hint = _did_you_mean(bad[0].split("=")[0], options) or f"; see {self.prog} --help"
            return f"unrecognized argument {bad[0]}{rest}{hint}"
        return f"{message}; see {self.prog} --help"


def _did_you_mean(given: str, known: list[str]) -> str:
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class CommandRegistry:
    """Hands command modules the top-level subparsers and the named groups' subparsers."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.top = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def group(self, name: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            group_parser = self.top.add_parser(name, help=GROUPS.get(name, ""))
            group_parser.set_defaults(func=lambda args, p=group_parser: p.print_help() or 2)
            self._groups[name] = group_parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        return self._groups[name]


def build_parser() -> argparse.ArgumentParser:
    """Create the parser with every command module's subcommands registered."""
    parser = OneLineParser(prog="sftlab", description="Supervised fine-tuning on your own machines.")
    registry = CommandRegistry(parser)
    for name in GROUPS:
        registry.group(name)
    import sftlab.commands as commands_pkg

    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"sftlab.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(registry)
    return parser


# Library messages that tell an offline user nothing they can act on: bitsandbytes (imported by peft) tries to fetch
# a CPU kernel from the hub on CPUs with AVX-512 BF16 and warns, through the `kernels` package, that it cannot.
_DROPPED_LOG_MESSAGES = {"kernels._internals.hf_hub": "Skipping publisher trust check for ",
                         "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
                         # sftlab cuts or refuses over-long inputs itself (data.max_length, serve's context check)
                         "transformers.tokenization_utils_base": "Token indices sequence length is longer than"}


def quiet_libraries() -> None:
    """No hub access (this is an offline tool) and no third-party progress bars; sftlab prints its own progress.
    Drops the messages above (hub kernels, transformers' token-length warning) and transformers' deprecation warning
    that peft's own code triggers."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name, start in _DROPPED_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(getattr(f, "sftlab_drops", None) == start for f in logger.filters):
            drop = logging.Filter()
            drop.filter = lambda record, start=start: not str(record.msg).startswith(start)
            drop.sftlab_drops = start
            logger.addFilter(drop)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; dotted overrides may come after options (`sftlab train run.yaml --resume train.lr=1e-4`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = hasattr(args, "overrides")
        bad = [item for item in extra if not takes_overrides or item.startswith("-") or "=" not in item]
        if bad:
            _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides or []) + extra
    return args


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command `args` ran (`sftlab data stats` -> the stats parser), else `parser`."""
    for dest in ("command", f"{getattr(args, 'command', None)}_command"):
        subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, dest, None)
        if subparsers is None or name not in subparsers.choices:
            break
        parser = subparsers.choices[name]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process (the console script goes through `console` first)."""
    quiet_libraries()
    try:
        parser = build_parser()
        args = parse_command_line(parser, argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        code = args.func(args)
    except SftlabError as exc:
        from sftlab.worker_errors import record

        if not record(exc):  # a worker of `sftlab train --nproc` leaves the one line to its launcher
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sftlab ... | head`: the reader is gone; end quietly, as a SIGPIPE would
        _discard_stdout()
        return 141
    return int(code or 0)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail on the closed pipe again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _training_arguments(argv: list[str]) -> argparse.Namespace | None:
    """The parsed arguments when `argv` is a valid `sftlab train` command line, else None (main reports errors)."""
    if not argv or argv[0] != "train" or "-h" in argv or "--help" in argv:
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return parse_command_line(build_parser(), argv)
    except SystemExit:
        return None


DEMO_COMMANDS = (["demo"], ["policy", "demo"])  # they train in-process with train.allocator: auto


def console(interpreter_args: tuple[str, ...] = ("-P", "-m", "sftlab")) -> int:
    """Entry point of the `sftlab` console script and of `python -m sftlab`: `main`, for `sftlab train` and the
    demos first moved onto jemalloc.

    Where the run config's train.allocator (for the demos: auto) resolves to jemalloc, the process re-executes
    itself as `python INTERPRETER_ARGS ARGS` with the library preloaded (`sftlab.jemalloc.reexec_on_jemalloc`)
    and this call does not return; otherwise (and for every other command) it runs `main` here. The console
    script re-executes as `python -P -m sftlab` (its directory is not the user's), `python -m sftlab` as itself,
    so that the same sftlab is found again."""
    argv = sys.argv[1:]
    program = [*interpreter_args, *argv]
    args = _training_arguments(argv)
    if args is not None:
        from sftlab.jemalloc import reexec_for_run_config

        reexec_for_run_config(args.config, list(args.overrides or []), program)
    elif any(argv[:len(command)] == command for command in DEMO_COMMANDS) and not {"-h", "--help"} & set(argv):
        from sftlab.jemalloc import reexec_on_jemalloc

        reexec_on_jemalloc("auto", program)  # auto never raises
    return main(argv)

if __name__ == "__main__":
    sys.exit(main())
