"""`sftlab generate MODEL --input in.jsonl --output out.jsonl`: one answer per input row, batched.

Input rows are canonical examples or anything `sftlab.data.formats` reads (their last assistant
turn, if any, becomes `reference`), `{"prompt": ...}` rows, `{"messages": [...]}` rows, or
`{"text": ...}` rows (plain continuation, no chat template). Prompts are rendered with the training
template; rows are decoded with continuous batching and left padding, so greedy answers equal
one-at-a-time answers. Answers are written in input order as they finish to OUT.partial (one line
each, flushed), which becomes OUT when all are done; after an error or Ctrl-C it stays, and
`--resume` continues it (same options, same first rows of --input) with the answers an
uninterrupted run gives. A bar on a terminal counts the answers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sftlab.errors import SftlabError

DTYPES = ("float32", "bfloat16", "float16", "auto")


def register(registry) -> None:
    parser = registry.top.add_parser("generate", help="generate answers for a file of prompts (batched)",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help="prompts: .jsonl/.json/.csv/... rows (see above)")
    parser.add_argument("--output", required=True, help="where to write one JSON line per input row")
    add_sampling_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="rows decoded together (default 16)")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT.partial, the answers an interrupted run kept (it must have had the same "
                             "options; --batch-size may differ)")
    parser.set_defaults(func=run_generate)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL positional plus --adapter/--template/--dtype/--trust-remote-code, shared by generate and chat."""
    parser.add_argument("model", metavar="MODEL", help="model dir, PEFT adapter dir, or run dir (with model/ inside)")
    parser.add_argument("--adapter", help="a PEFT adapter dir to apply on top of MODEL")
    parser.add_argument("--template", help="chat template (default: the run's data.template, else auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights dtype (default float32); auto: bfloat16 where the machine has bf16 matmuls in "
                             "hardware (AMX, AVX-512 BF16, a GPU), else float32")
    add_trust_argument(parser)


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """--trust-remote-code, shared by the commands that load a saved model (generate, chat, eval, serve, export)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code shipped in the model directory (config.json's auto_map: ChatGLM, "
                             "Baichuan, InternLM, ...); only for a directory you trust (default: refuse it)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (generate: row i uses seed + i; chat: turn i)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def check_choice(value, option: str, choices: Sequence[str]) -> None:
    """A Python caller's value for an option the CLI restricts to `choices` (None: not given)."""
    if value is not None and value not in choices:
        raise SftlabError(f"{option} {value!r}: expected one of {', '.join(choices)}")


def sampling_params(max_new_tokens: int, temperature: float, top_p: float, seed: int, stop: Sequence[str] = (),
                    index: int = 0):
    """The SamplingParams of row or turn `index` (seed + index), checked as the options are."""
    from sftlab.infer.sampling import SEED_MAX, SEED_MIN, SamplingParams

    if max_new_tokens < 1:
        raise SftlabError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise SftlabError("--temperature must be >= 0 and --top-p in (0, 1]")
    if not SEED_MIN <= seed + index <= SEED_MAX:
        raise SftlabError(f"--seed {seed}: row and turn seeds (--seed + i) must lie in {SEED_MIN}..{SEED_MAX}")
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + index,
                          stop=tuple(stop))


def sampling_from_args(args, index: int = 0):
    return sampling_params(args.max_new_tokens, args.temperature, args.top_p, args.seed, args.stop, index)


def load_model(model: str, adapter: str | None = None, template: str | None = None, dtype: str = "float32",
               trust_remote_code: bool = False):
    """Load MODEL (+ an adapter) and return (served model, template name, adapter name to use)."""
    from sftlab.infer.loading import load_served

    check_choice(dtype, "--dtype", DTYPES)
    adapters = {"adapter": str(adapter)} if adapter else None
    served = load_served(model, adapters=adapters, dtype=dtype, trust_remote_code=trust_remote_code)
    return served, template or served.template, served.adapters["adapter" if adapter else served.default_name]


def load_from_args(args):
    """Load MODEL (+ --adapter) and return (served model, template name, adapter name to use)."""
    return load_model(args.model, args.adapter, args.template, args.dtype, args.trust_remote_code)


def prompt_of_row(row: dict) -> dict:
    """{"messages": [...]} or {"text": ...} to generate from, plus the row's reference answer if it has one."""
    src = row.get("_src", "row")
    if isinstance(row.get("prompt"), str) and "completion" not in row:
        messages = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
        return {"src": src, "messages": messages + [{"role": "user", "content": row["prompt"]}], "reference": None}
    if isinstance(row.get("text"), str) and "messages" not in row:
        return {"src": src, "text": row["text"], "reference": row.get("label")}
    if isinstance(row.get("messages"), list) and all(isinstance(m, dict) and "role" in m for m in row["messages"]):
        messages = list(row["messages"])
    else:
        from sftlab.data.formats import to_canonical

        messages = to_canonical([row], "auto", stage="sft")[0]["messages"]
    reference = None
    if messages and messages[-1].get("role") == "assistant":
        reference = messages[-1].get("content")
        messages = messages[:-1]
    if not messages:
        raise SftlabError(f"{src}: no prompt left after removing the assistant answer")
    return {"src": src, "messages": messages, "reference": reference}


def encode_prompts(prompts: list[dict], tokenizer, template: str) -> list[list[int]]:
    from sftlab.infer.prompts import render_chat, render_text

    return [render_chat(tokenizer, p["messages"], template, src=p["src"]) if "messages" in p
            else render_text(tokenizer, p["text"]) for p in prompts]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise SftlabError(f"--batch-size must be at least 1, got {batch_size}")


def _prompt_row(row, index: int) -> dict:
    """A Python caller's prompt as an input row: a string is a user message; a row without `_src` is `prompts[i]`."""
    if isinstance(row, str):
        return {"_src": f"prompts[{index}]", "prompt": row}
    if not isinstance(row, dict):
        raise SftlabError(f"prompts[{index}]: expected a string or a row (a dict), got {type(row).__name__}")
    return {"_src": f"prompts[{index}]", **row}


def _encode_checked(prompts: list[dict], served, template: str) -> list[list[int]]:
    """The prompts' token ids; one that leaves no room in the model's context is an error naming its row."""
    prompt_ids = encode_prompts(prompts, served.tokenizer, template)
    for prompt, ids in zip(prompts, prompt_ids):
        if len(ids) >= served.max_context:
            raise SftlabError(f"{prompt['src']}: prompt has {len(ids)} tokens; the model's context is {served.max_context}")
    return prompt_ids


def answer_row(prompt: dict, event: dict) -> dict:
    """The output row of one prompt from its engine event; an error event is an error naming the prompt."""
    if event["type"] == "error":
        raise SftlabError(f"{prompt['src']}: {event['message']}")
    return {**prompt, "output": event["text"], "finish_reason": event["finish_reason"],
            "completion_tokens": event["completion_tokens"]}


def generate(model: str | Path, prompts: Sequence[str | dict], *, adapter: str | Path | None = None,
             template: str | None = None, dtype: str = "float32", trust_remote_code: bool = False,
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             stop: str | Sequence[str] = (), batch_size: int = 16) -> list[dict]:
    """`sftlab generate MODEL` in this process, on a list instead of files: one answer per prompt, a string (a user
    message) or a row as --input takes it; returns the rows --output would hold (`output`, `finish_reason`,
    `completion_tokens`, the prompt and its `reference`). Keywords are the options of that name (`stop`: one stop
    string or a list)."""
    from sftlab.cli import quiet_libraries
    from sftlab.infer.engine import generate_all
    from sftlab.infer.prompts import stop_token_ids

    quiet_libraries()
    _check_batch_size(batch_size)
    if isinstance(prompts, str):
        raise SftlabError("prompts: expected a list of prompts, got one string (write [prompt])")
    prompts = [prompt_of_row(_prompt_row(row, index)) for index, row in enumerate(prompts)]
    stop = [stop] if isinstance(stop, str) else stop
    params = [sampling_params(max_new_tokens, temperature, top_p, seed, stop, i) for i in range(len(prompts))]
    served, template, adapter = load_model(str(model), adapter, template, dtype, trust_remote_code)
    prompt_ids = _encode_checked(prompts, served, template)
    stops = stop_token_ids(served.tokenizer, served.model, template)
    results = generate_all(served, prompt_ids, params, stops, max_batch=batch_size, adapter=adapter)
    return [answer_row(prompt, result) for prompt, result in zip(prompts, results)]


def _answers_after(args, prompts: list[dict], params: list, done: int):
    """Load the model, then the answer rows of prompts[done:] in input order, each as soon as it and the rows before
    it are finished; row i keeps its seed (--seed + i), so a resumed run gives the answers an uninterrupted one does."""
    from sftlab.infer.engine import answers_in_order
    from sftlab.infer.prompts import stop_token_ids

    served, template, adapter = load_from_args(args)
    prompt_ids = _encode_checked(prompts[done:], served, template)
    stops = stop_token_ids(served.tokenizer, served.model, template)
    events = answers_in_order(served, prompt_ids, params[done:], stops, args.batch_size, adapter)
    return (answer_row(prompts[done + index], event) for index, event in events)


def run_generate(args) -> int:
    from sftlab.commands.generate_partial import PartialAnswers, settings_of
    from sftlab.data.formats import read_rows

    _check_batch_size(args.batch_size)
    partial = PartialAnswers(args.output, settings_of(args))
    given = Path(args.input).resolve()
    if Path(args.output).resolve() == given:
        raise SftlabError(f"--output {args.output} is the input file; inputs are never overwritten")
    if given in (partial.path.resolve(), partial.record.resolve()):
        raise SftlabError(f"--input {args.input} is where --output's partial answers go; inputs are never overwritten")
    if Path(args.output).is_dir():
        raise SftlabError(f"--output {args.output} is a directory; expected the path of the JSONL file to write")
    prompts = [prompt_of_row(row) for row in read_rows(args.input)]
    params = [sampling_from_args(args, i) for i in range(len(prompts))]
    done = partial.check(prompts, args.resume)
    if done < len(prompts):
        partial.write(_answers_after(args, prompts, params, done), len(prompts))
    partial.finish()
    print(f"wrote {len(prompts)} answers to {args.output}")
    return 0
