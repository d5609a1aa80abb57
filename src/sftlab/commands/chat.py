"""`sftlab chat MODEL`: talk to a model in the terminal, tokens streamed as they are generated.

Each line you type is one user turn; the conversation is rendered with the training template.
`/reset` forgets the conversation (keeping --system), `/exit` (or end of input) quits. Works with
piped stdin too, e.g. `printf 'hi\\n/exit\\n' | sftlab chat runs/exp1`.
"""

from __future__ import annotations

import argparse
import sys

from sftlab.commands.generate import add_model_arguments, add_sampling_arguments, load_from_args, sampling_from_args
from sftlab.errors import SftlabError


def register(registry) -> None:
    parser = registry.top.add_parser("chat", help="interactive chat with a model (streaming)",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--system", help="system message that starts every conversation")
    add_sampling_arguments(parser)
    parser.set_defaults(func=run_chat)


def run_chat(args) -> int:
    from sftlab.infer.prompts import stop_token_ids

    served, template, adapter = load_from_args(args)
    stops = stop_token_ids(served.tokenizer, served.model, template)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    turn = 0
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(start)
            print("(conversation reset)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer = stream_answer(served, messages, template, sampling_from_args(args, turn), stops, adapter)
        except ConversationTooLong as exc:  # the session goes on: this turn is dropped, /reset starts over
            messages.pop()
            print(f"error: {exc}", file=sys.stderr, flush=True)
            continue
        messages.append({"role": "assistant", "content": answer})
        turn += 1


class ConversationTooLong(SftlabError):
    """The conversation with the new turn does not fit the model's context."""


def stream_answer(served, messages, template, params, stops, adapter) -> str:
    """Generate one answer, printing text pieces to stdout as they come; returns the whole answer."""
    from sftlab.infer.engine import Request, Scheduler
    from sftlab.infer.prompts import render_chat

    prompt = render_chat(served.tokenizer, messages, template)
    if len(prompt) >= served.max_context:
        raise ConversationTooLong(f"the conversation has {len(prompt)} tokens, the model's context is "
                                  f"{served.max_context}; this turn was dropped: send a shorter one, or /reset")
    final: dict = {}

    def emit(event: dict) -> None:
        if event["type"] == "delta":
            print(event["text"], end="", flush=True)
        else:
            final.update(event)

    scheduler = Scheduler(served, stops, max_batch=1)
    scheduler.add(Request(prompt, params, emit, adapter=adapter))
    while not scheduler.idle:
        scheduler.tick()
    print(flush=True)
    if final.get("type") == "error":
        raise SftlabError(final["message"])
    return final.get("text", "")
