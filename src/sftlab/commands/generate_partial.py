"""`sftlab generate`'s partial file: answers appended in input order as they finish, kept after a crash, resumed.

OUTPUT.partial holds the answers done so far, one JSON line each, flushed as it is written; OUTPUT.partial.json
records the options the answers depend on (MODEL, --adapter, --template, --dtype and the sampling options). When
every answer is in, the partial file is renamed to OUTPUT (so OUTPUT never exists half-written) and the record is
removed. After an error or Ctrl-C both stay, and `--resume` continues: the record must match this run's options and
the partial file's rows must answer the first rows of --input, in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.progress import count_bar, say

PROMPT_FIELDS = ("messages", "text", "reference")  # what a partial row must share with its input row (not `src`)
OPTIONS = {"model": "MODEL", "adapter": "--adapter", "template": "--template", "dtype": "--dtype",
           "max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_p": "--top-p", "seed": "--seed",
           "stop": "--stop"}


def settings_of(args) -> dict:
    """The options of `sftlab generate` that its answers depend on (not --batch-size: answers do not depend on it)."""
    return {"model": str(Path(args.model).resolve()), "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
            "template": args.template, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "stop": list(args.stop)}


def answer_bar(total: int, done: int):
    """`sftlab.progress.count_bar` of answers written (from `done`, resumed)."""
    return count_bar(total, "generating", "answers", initial=done)


class PartialAnswers:
    """OUTPUT.partial and its record: `check` (before loading the model), `write`, then `finish`."""

    def __init__(self, output: str | Path, settings: dict):
        self.output = Path(output)
        self.path = Path(f"{output}.partial")
        self.record = Path(f"{output}.partial.json")
        self.settings = settings
        self.done = 0

    def check(self, prompts: list[dict], resume: bool) -> int:
        """How many answers the partial file already holds (0 when there is none); refuses one this run cannot
        continue. Without `resume`, an existing partial file is an error (it holds work a rerun would throw away)."""
        if not self.path.exists():
            if resume:
                say(f"note: there is no {self.path} to resume; starting from the first prompt")
            return 0
        if not resume:
            raise SftlabError(f"{self.path} holds the answers of an interrupted run: pass --resume to continue it, "
                              "or remove it to start over")
        self._check_settings()
        answers = self._read()
        if len(answers) > len(prompts):
            raise SftlabError(f"--resume: {self.path} holds {len(answers)} answers but --input has {len(prompts)} "
                              "rows; it was made from another --input: remove it to start over")
        for line, (answer, prompt) in enumerate(zip(answers, prompts), 1):
            wanted = json.loads(json.dumps({k: prompt.get(k) for k in PROMPT_FIELDS}, ensure_ascii=False, default=str))
            if any(answer.get(k) != wanted[k] for k in PROMPT_FIELDS):
                raise SftlabError(f"--resume: {self.path}:{line} does not answer {prompt['src']} (another prompt or "
                                  "reference); it was made from another --input: remove it to start over")
        self.done = len(answers)
        return self.done

    def write(self, rows: Iterable[dict], total: int) -> None:
        """Append `rows` (the answers after the first `done`), one flushed line each, with a bar counting to `total`.
        On an error or Ctrl-C the file stays and a note says how many answers it keeps (in the error's own line for an
        SftlabError); a run that stops with no answer at all leaves nothing behind."""
        if not self.done:
            from sftlab.io import atomic_write_json, check_output_parent

            check_output_parent(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.record, self.settings)
        kept = self.done
        try:
            with open(self.path, "a" if self.done else "w", encoding="utf-8") as handle, \
                    answer_bar(total, self.done) as bar:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                    handle.flush()
                    kept += 1
                    bar.update()
        except BaseException as exc:
            if not kept:
                self._remove()
                raise
            note = (f"{self.path} keeps {kept} of {total} answers: run the same command with --resume to "
                    "continue")
            if isinstance(exc, SftlabError):
                raise SftlabError(f"{exc} ({note})") from exc
            say(f"stopped: {note}")
            raise

    def finish(self) -> None:
        """Every answer is in: the partial file becomes OUTPUT in one rename; its record goes."""
        os.replace(self.path, self.output)
        self.record.unlink(missing_ok=True)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)

    def _check_settings(self) -> None:
        from sftlab.io import read_json

        if not self.record.is_file():
            raise SftlabError(f"--resume: {self.record} is missing, so the options {self.path} was made with are "
                              "unknown: remove it to start over")
        made_with = read_json(self.record)
        if not isinstance(made_with, dict):
            raise SftlabError(f"--resume: {self.record}: expected a JSON object of options")
        for key, option in OPTIONS.items():
            if made_with.get(key) != self.settings[key]:
                raise SftlabError(f"--resume: {self.path} was made with {option} {made_with.get(key)!r}, not "
                                  f"{self.settings[key]!r}: resume with the options it was made with, or remove it "
                                  "to start over")

    def _read(self) -> list[dict]:
        """The answers in the partial file; a last line cut short (the run stopped while writing it) is dropped."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            whole = data.rfind(b"\n") + 1
            os.truncate(self.path, whole)
            data = data[:whole]
            say(f"note: dropped the last line of {self.path}, cut short when the run stopped")
        answers = []  # split at "\n" only: JSON lines may hold U+2028 and the like, which splitlines() splits at
        for line, text in enumerate(data.decode("utf-8", errors="replace").split("\n")[:-1], 1):
            try:
                answer = json.loads(text)
            except json.JSONDecodeError:
                answer = None
            if not isinstance(answer, dict):
                raise SftlabError(f"--resume: {self.path}:{line}: not an answer row (a JSON object): remove the file "
                                  "to start over")
            answers.append(answer)
        return answers
