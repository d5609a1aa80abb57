"""Chat rendering and loss masks: parity with `apply_chat_template`, supervised text, prompts, stops, errors."""

from __future__ import annotations

import pytest

from sftlab.data.templates import IGNORE_INDEX, encode_conversation, render_prompt, stop_token_ids
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer

FAMILIES = ["chatml", "llama3", "gemma", "mistral"]
SYSTEM = {"role": "system", "content": "You are terse."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": "Paris."}],
    "system": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    "multi": [SYSTEM, {"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"},
              {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "2"},
              {"role": "user", "content": "Three?"}, {"role": "assistant", "content": "3 then."}],
    "chinese": [{"role": "user", "content": "关于开展高新技术企业认定工作的通知是什么？"},
                {"role": "assistant", "content": "企业所得税优惠政策，中小企业融资支持。"}],
    "spaces": [{"role": "system", "content": "  padded system "},
               {"role": "user", "content": "  leading and trailing  "},
               {"role": "assistant", "content": " answer with spaces \n"}],
}
# What the model must write for an answer: the text after the generation prompt, through the end of turn.
EXPECTED_ANSWER = {
    "chatml": lambda content: content + "<|im_end|>",
    "llama3": lambda content: content.strip() + "<|eot_id|>",
    "gemma": lambda content: content.strip() + "<end_of_turn>",
    "mistral": lambda content: " " + content + "</s>",
}


@pytest.fixture(scope="module")
def tokenizers():
    return {name: make_tokenizer(name) for name in [*FAMILIES, "none"]}


def _ids(encoded) -> list[int]:
    """apply_chat_template may return a list or (transformers 5) a BatchEncoding / dict."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def _supervised_runs(tok, ids, labels) -> list[str]:
    """Decoded text of each maximal run of supervised tokens."""
    runs, current = [], []
    for tid, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(run) for run in runs]


def _answers(messages):
    return [m["content"] for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(CONVERSATIONS))
@pytest.mark.parametrize("template", ["named", "auto"])
def test_ids_match_apply_chat_template_and_masks_cover_the_answers(tokenizers, family, case, template):
    tok, messages = tokenizers[family], CONVERSATIONS[case]
    ids, labels = encode_conversation(tok, messages, family if template == "named" else "auto")
    assert ids == _ids(tok.apply_chat_template(messages, tokenize=True))
    assert len(labels) == len(ids)
    expected = [EXPECTED_ANSWER[family](content) for content in _answers(messages)]
    assert _supervised_runs(tok, ids, labels) == expected
    end_of_turn = stop_token_ids(tok, family)[0]
    assert sum(1 for tid, label in zip(ids, labels) if label == end_of_turn) == len(expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_named_and_auto_agree_on_ids_and_labels(tokenizers, family):
    messages = CONVERSATIONS["multi"]
    assert encode_conversation(tokenizers[family], messages, family) == \
        encode_conversation(tokenizers[family], messages, "auto")


@pytest.mark.parametrize("family", FAMILIES)
def test_last_assistant_and_all_masks(tokenizers, family):
    tok, messages = tokenizers[family], CONVERSATIONS["multi"]
    ids, labels = encode_conversation(tok, messages, family, mask="last_assistant")
    assert _supervised_runs(tok, ids, labels) == [EXPECTED_ANSWER[family]("3 then.")]
    all_ids, all_labels = encode_conversation(tok, messages, family, mask="all")
    assert all_ids == ids and all_labels == all_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_render_prompt_matches_generation_prompt_and_training_prefix(tokenizers, family):
    tok, messages = tokenizers[family], CONVERSATIONS["system"]
    for template in (family, "auto"):
        prompt = render_prompt(tok, messages[:-1], template)
        assert prompt == _ids(tok.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True))
        ids, labels = encode_conversation(tok, messages, template)
        first_supervised = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert ids[:first_supervised] == prompt


@pytest.mark.parametrize("family, end_token", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"),
                                               ("gemma", "<end_of_turn>"), ("mistral", "</s>")])
def test_stop_tokens_start_with_the_end_of_turn_token(tokenizers, family, end_token):
    tok = tokenizers[family]
    end_id = tok.convert_tokens_to_ids(end_token)
    assert stop_token_ids(tok, family)[0] == end_id
    assert stop_token_ids(tok, "auto")[0] == end_id
    assert tok.eos_token_id in stop_token_ids(tok, family)


def test_llama3_and_gemma_stop_on_their_document_end_tokens_too(tokenizers):
    assert tokenizers["llama3"].convert_tokens_to_ids("<|end_of_text|>") in stop_token_ids(tokenizers["llama3"], "llama3")
    assert tokenizers["gemma"].convert_tokens_to_ids("<eos>") in stop_token_ids(tokenizers["gemma"], "gemma")


def test_auto_without_own_template_falls_back_to_chatml():
    tok = make_tokenizer("chatml")
    tok.chat_template = None
    messages = CONVERSATIONS["multi"]
    assert encode_conversation(tok, messages, "auto") == encode_conversation(make_tokenizer("chatml"), messages, "chatml")


def test_auto_fallback_without_chatml_tokens_says_what_to_set(tokenizers):
    with pytest.raises(SftlabError, match=r"no chat template and no <\|im_end\|> token .*\(plain needs only an EOS token\)"):
        encode_conversation(tokenizers["none"], CONVERSATIONS["single"], "auto")


def test_plain_template_text_and_mask(tokenizers):
    tok = tokenizers["none"]  # BERT-like: no chat tokens, EOS is [SEP]; plain text starts with [CLS] (its BOS)
    ids, labels = encode_conversation(tok, CONVERSATIONS["multi"], "plain")
    assert tok.decode(ids) == ("[CLS]You are terse.\n\nUser: One?\nAssistant: 1[SEP]\nUser: Two?\nAssistant: 2[SEP]\n"
                               "User: Three?\nAssistant: 3 then.[SEP]\n")
    assert _supervised_runs(tok, ids, labels) == [" 1[SEP]", " 2[SEP]", " 3 then.[SEP]"]
    assert tok.decode(render_prompt(tok, CONVERSATIONS["single"][:1], "plain")) == \
        "[CLS]User: What is the capital of France?\nAssistant:"
    assert stop_token_ids(tok, "plain") == [tok.convert_tokens_to_ids("[SEP]")]


@pytest.mark.parametrize("family", ["chatml", "gemma", "none"])
def test_raw_template_is_trl_prompt_plus_completion_plus_eos(tokenizers, family):
    """TRL's standard prompt/completion rows: tokenizer(prompt + completion) (its own BOS, if any) + EOS, with
    the completion and the EOS supervised; the generation prompt is the prompt text alone."""
    from sftlab.data.formats import to_canonical

    tok = tokenizers[family]
    row = {"prompt": "The capital of France is", "completion": " Paris."}
    messages = to_canonical([row], "prompt_completion")[0]["messages"]
    ids, labels = encode_conversation(tok, messages, "raw")
    plain = tok("The capital of France is Paris.")["input_ids"]
    if plain[-1] != tok.eos_token_id:  # a BERT-like tokenizer closes plain text with its EOS ([SEP]) already
        plain = plain + [tok.eos_token_id]
    assert ids == plain
    assert _supervised_runs(tok, ids, labels) == [" Paris." + tok.eos_token]
    prompt = render_prompt(tok, messages[:1], "raw")
    assert ids[:len(prompt)] == prompt and tok.decode(prompt).endswith("The capital of France is")
    assert stop_token_ids(tok, "raw") == [tok.eos_token_id]


def test_answer_starting_with_newlines_keeps_parity_and_supervises_the_whole_answer(tokenizers):
    tok = tokenizers["chatml"]  # "assistant\n" + "\n\nx": the newlines may merge across the prompt boundary
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n\nIndented answer"}]
    ids, labels = encode_conversation(tok, messages, "chatml")
    assert ids == _ids(tok.apply_chat_template(messages, tokenize=True))
    supervised = "".join(_supervised_runs(tok, ids, labels))
    assert supervised.endswith("\n\nIndented answer<|im_end|>")


class _SlowView:
    """The same tokenizer presented as a slow one (no offsets): exercises the piece-by-piece encoder."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kwargs):
        kwargs.pop("return_offsets_mapping", None)
        return self._tok(text, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_slow_tokenizer_path_gives_the_same_ids_and_labels(tokenizers, family):
    tok, messages = tokenizers[family], CONVERSATIONS["multi"]
    assert encode_conversation(_SlowView(tok), messages, family) == encode_conversation(tok, messages, family)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "hi"}], "train.jsonl:7: conversation has no assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "train.jsonl:7: message 1 has unknown role 'bot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "train.jsonl:7: message 1 is an assistant turn with empty content"),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "a"}], "train.jsonl:7: message 0 .user. has no text"),
    ([], "train.jsonl:7: expected a non-empty list"),
])
def test_bad_conversations_raise_one_line_errors_naming_the_record(tokenizers, messages, message):
    with pytest.raises(SftlabError, match=message) as info:
        encode_conversation(tokenizers["chatml"], messages, "chatml", src="train.jsonl:7")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mask", ["assistant", "last_assistant"])
def test_a_turn_after_the_last_answer_is_refused_unless_everything_is_trained(tokenizers, mask):
    messages = [*CONVERSATIONS["single"], {"role": "user", "content": "and Spain?"}]
    with pytest.raises(SftlabError) as info:
        encode_conversation(tokenizers["chatml"], messages, "chatml", mask=mask, src="train.jsonl:7")
    assert str(info.value) == ("train.jsonl:7: the conversation ends with a user turn after its last answer, which "
                               "nothing would learn from; remove it or add the answer (or set data.mask: all)")
    ids, labels = encode_conversation(tokenizers["chatml"], messages, "chatml", mask="all")
    assert labels[-3:] == ids[-3:]


def test_unknown_template_lists_the_known_ones(tokenizers):
    with pytest.raises(SftlabError, match=r"unknown chat template 'vicuna'; known: auto, chatml \(alias qwen\), gemma"):
        encode_conversation(tokenizers["chatml"], CONVERSATIONS["single"], "vicuna")


def test_unknown_mask_is_refused(tokenizers):
    with pytest.raises(SftlabError, match="data.mask: unknown mask 'prompt'"):
        encode_conversation(tokenizers["chatml"], CONVERSATIONS["single"], "chatml", mask="prompt")


def test_template_whose_tokens_the_tokenizer_lacks_is_refused(tokenizers):
    with pytest.raises(SftlabError, match=r"llama3: the tokenizer has no single token for .*<\|eot_id\|>"):
        encode_conversation(tokenizers["chatml"], CONVERSATIONS["single"], "llama3")


def test_gemma_accepts_a_system_message_only_first(tokenizers):
    messages = [{"role": "user", "content": "a"}, SYSTEM, {"role": "assistant", "content": "b"}]
    with pytest.raises(SftlabError, match="x:1: message 1: template gemma allows a system message only as the first"):
        encode_conversation(tokenizers["gemma"], messages, "gemma", src="x:1")


def test_own_template_that_rewrites_earlier_turns_is_refused():
    tok = make_tokenizer("chatml")
    tok.chat_template = ("{{ messages | length }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(SftlabError, match="d.jsonl:2: the tokenizer's chat template is not prefix-stable at message 1"):
        encode_conversation(tok, CONVERSATIONS["single"], "auto", src="d.jsonl:2")


def test_own_template_without_an_end_token_is_refused():
    tok = make_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(SftlabError, match="ends an assistant turn without a special token"):
        encode_conversation(tok, CONVERSATIONS["single"], "auto")


def test_own_template_errors_become_one_line_errors():
    tok = make_tokenizer("chatml")
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(SftlabError, match="f:3: the tokenizer's chat template failed: roles must alternate"):
        encode_conversation(tok, CONVERSATIONS["single"], "auto", src="f:3")


def test_own_template_with_a_default_system_prompt_is_prefix_stable():
    tok = make_tokenizer("chatml")  # like Qwen2.5: a default system turn when the conversation has none
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = CONVERSATIONS["multi"][1:]
    ids, labels = encode_conversation(tok, messages, "auto")
    assert ids == _ids(tok.apply_chat_template(messages, tokenize=True))
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are helpful.")
    assert _supervised_runs(tok, ids, labels) == ["1<|im_end|>", "2<|im_end|>", "3 then.<|im_end|>"]


# A template of the kind Qwen3's is: the last assistant turn gets an (empty) reasoning block, earlier ones not.
LAST_TURN_THINKS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TWO_TURNS = [{"role": "user", "content": "one?"}, {"role": "assistant", "content": "1"},
             {"role": "user", "content": "two?"}, {"role": "assistant", "content": "2"}]


def test_each_assistant_mask_gives_a_sample_per_turn_as_the_template_renders_it(tmp_path):
    from sftlab.config.schema import DataConfig, TrainConfig
    from sftlab.data.tokenize import tokenize_examples

    tok = make_tokenizer("chatml")
    tok.chat_template = LAST_TURN_THINKS
    with pytest.raises(SftlabError, match="not prefix-stable at message 1 .*set data.mask to each_assistant"):
        encode_conversation(tok, TWO_TURNS, "auto")
    data = DataConfig(train="unused.jsonl", mask="each_assistant", cache_dir=str(tmp_path))
    rows, stats = tokenize_examples([{"messages": TWO_TURNS, "_src": "d.jsonl:1"}], tok, data,
                                    TrainConfig(stage="sft", max_length=128))
    assert (stats.examples, stats.rows) == (2, 2)
    for index, end in enumerate((2, 4)):  # each sample: the conversation up to the turn, as the template renders it
        ids, labels = rows[index]["input_ids"], rows[index]["labels"]
        assert list(ids) == tok.apply_chat_template(TWO_TURNS[:end], tokenize=True, return_dict=False)
        prompt = tok.apply_chat_template(TWO_TURNS[:end - 1], tokenize=True, add_generation_prompt=True,
                                         return_dict=False)
        supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert supervised[0] == len(prompt)  # the turn's tokens (think block, answer, <|im_end|>) and no other
        assert tok.decode([ids[i] for i in supervised]).startswith("<think>")
        assert tok.convert_ids_to_tokens(ids[supervised[-1]]) == "<|im_end|>"
