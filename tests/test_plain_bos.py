"""The `plain` and `raw` templates start a conversation as the tokenizer starts plain text, as pt documents do."""

from __future__ import annotations

import pytest
from tokenizers import processors

from sftlab.data.templates import adds_bos, chat_format, encode_conversation
from sftlab.models.tiny import make_tokenizer

CONVERSATION = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]


def _bos_adding(template: str):
    """A tiny tokenizer that puts BOS before plain text, as Llama's and Gemma's do."""
    tok = make_tokenizer(template)
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)])
    return tok


@pytest.mark.parametrize("template, text", [("plain", "User: hello there"), ("raw", "hello therehi")])
@pytest.mark.parametrize("make, expected", [
    (lambda: _bos_adding("llama3"), True),
    (lambda: make_tokenizer("llama3"), False),   # a BOS token the tokenizer does not add to plain text
    (lambda: make_tokenizer("chatml"), False),   # no BOS token at all (Qwen)
])
def test_plain_starts_like_a_pt_document(make, expected, template, text):
    tok = make()
    assert adds_bos(tok) is expected
    document = tok(text, add_special_tokens=True)["input_ids"]
    ids, labels = encode_conversation(tok, CONVERSATION, template=template)
    assert (ids[0] == tok.bos_token_id) is expected
    assert ids[:len(document)] == document          # the same start as a pt document of the same text
    assert labels[0] == -100
    prompt = chat_format(tok, template).prompt_text(CONVERSATION[:1], None, None)
    assert prompt.startswith(tok.bos_token or "\0") is expected
