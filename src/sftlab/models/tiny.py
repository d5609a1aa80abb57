"""Tiny random models and tokenizers built in code, for tests, examples and benchmarks (no downloads).

    tok = make_tokenizer("chatml")                     # byte-level BPE with a ChatML chat template
    model = make_tiny_model("qwen2", tok)              # 2-layer Qwen2ForCausalLM, random weights
    save_tiny("llama", "runs/tiny-llama")              # a directory from_pretrained can load

`sftlab model tiny ARCH OUT` writes one from the command line.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

Arch = Literal["llama", "qwen2", "gemma3", "gpt2", "bert"]
TemplateName = Literal["chatml", "llama3", "gemma", "mistral", "none"]

ARCH_TEMPLATE: dict[str, TemplateName] = {"llama": "llama3", "qwen2": "chatml", "gemma3": "gemma", "gpt2": "chatml", "bert": "none"}

# Special tokens of each chat format: (bos, eos, pad, extra specials).
_SPECIALS: dict[str, tuple[str | None, str, str, list[str]]] = {
    "chatml": (None, "<|im_end|>", "<|endoftext|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
               ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]),
    "gemma": ("<bos>", "<end_of_turn>", "<pad>", ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]),
    "mistral": ("<s>", "</s>", "<pad>", ["<s>", "</s>", "<pad>", "[INST]", "[/INST]"]),
    "none": ("[CLS]", "[SEP]", "[PAD]", ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"]),
}

# Jinja chat templates equivalent to the upstream families' templates (system, multi-turn, generation prompt).
CHAT_TEMPLATES: dict[str, str | None] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
        "{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% endif %}{% endfor %}"
    ),
    "none": None,
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning adapts a pretrained language model to a task with labelled examples.",
    "Policy notices about tax relief, subsidies, talent programmes and export support.",
    "What is the capital of France? Paris is the capital of France.",
    "关于开展2026年度高新技术企业认定工作的通知",
    "企业所得税优惠政策，中小企业融资支持，绿色低碳转型。",
    "user assistant system model instruction input output response question answer",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" \n\t",
]


@functools.lru_cache(maxsize=16)
def _tokenizer_json(template: str, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = _SPECIALS[template][3]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def make_tokenizer(template: TemplateName = "chatml", vocab_size: int = 600):
    """A byte-level BPE tokenizer (any text, Chinese included) with the given chat format's special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad, _ = _SPECIALS[template]
    kwargs = dict(eos_token=eos, pad_token=pad)
    if bos:
        kwargs["bos_token"] = bos
    if template == "none":
        kwargs.update(cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(template, vocab_size)), **kwargs)
    tok.chat_template = CHAT_TEMPLATES[template]
    if template == "none":
        from tokenizers import processors

        cls_id, sep_id = tok.convert_tokens_to_ids(["[CLS]", "[SEP]"])
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.model_max_length = 2048
    return tok


def tiny_config(arch: Arch, tokenizer, num_labels: int | None = None, hidden: int = 64, layers: int = 2):
    """A small config of the given family sized to the tokenizer (vocab, special token ids)."""
    from transformers import BertConfig, Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    vocab = len(tokenizer)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=hidden * 2, max_position_embeddings=2048, **ids)
    if arch == "llama":
        cfg = LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **common)
    elif arch == "qwen2":
        cfg = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False, **common)
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=64, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=2048, **ids)
    elif arch == "bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=hidden * 2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of llama, qwen2, gemma3, gpt2, bert")
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def make_tiny_model(arch: Arch, tokenizer=None, task: Literal["causal_lm", "cls"] = "causal_lm",
                    num_labels: int = 2, seed: int = 0, **size):
    """A randomly initialised tiny model (seeded) for `task`; bert is always a classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tokenizer = tokenizer or make_tokenizer(ARCH_TEMPLATE[arch])
    torch.manual_seed(seed)
    if task == "cls" or arch == "bert":
        cfg = tiny_config(arch, tokenizer, num_labels=num_labels, **size)
        return AutoModelForSequenceClassification.from_config(cfg)
    return AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer, **size))


def save_tiny(arch: Arch, out_dir: str | Path, task: Literal["causal_lm", "cls"] = "causal_lm",
              num_labels: int = 2, seed: int = 0, **size) -> Path:
    """Write a tiny model and its tokenizer to `out_dir` (loadable with from_pretrained)."""
    out = Path(out_dir)
    tok = make_tokenizer(ARCH_TEMPLATE[arch])
    model = make_tiny_model(arch, tok, task=task, num_labels=num_labels, seed=seed, **size)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
