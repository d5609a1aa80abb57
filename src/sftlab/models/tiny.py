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


_GGUF_LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                     "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GGUF_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}


def save_tiny_adapter(base_dir: str | Path, out_dir: str | Path, seed: int) -> str:
    """A LoRA adapter (rank 4 on q_proj and v_proj) of the tiny qwen2 saved at `base_dir`, written to `out_dir`, with
    weights drawn from `seed` (std 0.5: a distinct, non-zero update per seed); its adapter_config names `base_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model("qwen2", make_tokenizer("chatml"))  # seed 0: the weights save_tiny wrote
    base.name_or_path = str(base_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    for name, param in lora.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.5)
    lora.save_pretrained(out_dir)
    return str(out_dir)


def _llama_cpp_permute(weight, n_head: int):
    """llama.cpp's row order for q/k projections (its converter interleaves the rotary halves)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_tokenizer_fields(writer, tokenizer, chat_template: bool) -> None:
    """Write a byte-level BPE tokenizer (vocab, merges, special ids, chat template) as llama.cpp's `gpt2` model."""
    import json

    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    control = {added["id"] for added in spec["added_tokens"]}
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(token_id)
    if chat_template and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def save_tiny_gguf(out_file: str | Path, quant: Literal["F32", "Q8_0"] = "F32", seed: int = 0, chat_template: bool = True):
    """Write a tiny llama (llama3 chat template) as a GGUF file laid out like llama.cpp's converter does.

    Returns `(model, tokenizer)`, the source the file was written from. With quant="Q8_0" the 2-D
    weights are stored Q8_0-quantised (norms stay F32), so importing must dequantise them.
    `chat_template=False` leaves the template out, as some published GGUFs do.
    """
    import gguf
    import numpy as np

    tok = make_tokenizer("llama3")
    model = make_tiny_model("llama", tok, seed=seed)
    cfg = model.config
    writer = gguf.GGUFWriter(str(out_file), "llama")
    writer.add_name("tiny-llama")
    for setter, value in ((writer.add_context_length, cfg.max_position_embeddings), (writer.add_embedding_length, cfg.hidden_size),
                          (writer.add_block_count, cfg.num_hidden_layers), (writer.add_feed_forward_length, cfg.intermediate_size),
                          (writer.add_head_count, cfg.num_attention_heads), (writer.add_head_count_kv, cfg.num_key_value_heads),
                          (writer.add_rope_freq_base, cfg.rope_parameters["rope_theta"]), (writer.add_layer_norm_rms_eps, cfg.rms_norm_eps),
                          (writer.add_rope_dimension_count, cfg.hidden_size // cfg.num_attention_heads), (writer.add_vocab_size, cfg.vocab_size)):
        setter(value)
    _gguf_tokenizer_fields(writer, tok, chat_template)
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if name in _GGUF_GLOBAL_NAMES:
            gguf_name = _GGUF_GLOBAL_NAMES[name]
        else:
            _, _, index, *rest = name.split(".")
            module = ".".join(rest[:-1])
            if module in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = cfg.num_attention_heads if module.endswith("q_proj") else cfg.num_key_value_heads
                array = _llama_cpp_permute(array, heads)
            gguf_name = f"blk.{index}.{_GGUF_LAYER_NAMES[module]}.{rest[-1]}"
        array = np.ascontiguousarray(array)
        if quant == "Q8_0" and array.ndim == 2:
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tok
