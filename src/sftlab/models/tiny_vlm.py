"""Tiny random vision-language models built from configs in code, with a tokenizer and processor (no downloads).

    processor = make_vlm_processor("qwen2_vl")       # byte-level BPE + Qwen2-VL image processor + chat template
    model = make_tiny_vlm("qwen2_vl", processor)     # 2-layer vision tower, 2-layer language model, random weights
    save_tiny_vlm("qwen2_vl", "runs/tiny-qwen2-vl")  # a directory that sftlab.vision.load loads offline

Families (`sftlab model tiny-vlm FAMILY OUT` writes one):
- `qwen2_vl`: Qwen2-VL, `<|vision_start|><|image_pad|><|vision_end|>` per image, ChatML turns; images are resized
  to between 28x28 and 56x56 pixels of area in 14-pixel patches merged 2x2, so an image becomes 1-4 image tokens.
- `qwen2_5_vl`: Qwen2.5-VL, the same tokens, turns and image sizes, a windowed-attention vision tower.
- `llava`: a CLIP vision tower, a two-layer projector and a Llama language model, `<image>` per image, ChatML
  turns; images are 28x28 pixels in 14-pixel patches, 4 image tokens.
- `gemma3`: Gemma 3 with a SigLIP vision tower, `<start_of_image>` per image (expanded by the processor to
  `<start_of_image>` + 4 `<image_soft_token>` + `<end_of_image>`), Gemma turns, tied embeddings.
The image processors are built from their classes with these explicit small sizes, and the chat templates render
OpenAI-style content parts (`{"type": "image"}` / `{"type": "text", "text": ...}`) as the families' own templates
do. The processors come from `sftlab.vision.load.image_only_processor`, so they work without torchvision (which
transformers 5 needs for video processors only).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

from sftlab.models.tiny import _CORPUS

VlmFamily = Literal["qwen2_vl", "qwen2_5_vl", "llava", "gemma3"]
FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "llava", "gemma3")

_CHATML_TURN = "{{ '<|im_start|>' + message['role'] + '\\n' }}"
_PARTS = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
          "{% if part['type'] == 'image' or part['type'] == 'image_url' %}{{ IMAGE }}"
          "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}")
_END = "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

# Per family: special tokens, the text an image part renders to, and the pad token.
_FAMILY_TOKENS: dict[str, dict] = {
    "qwen2_vl": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                              "<|image_pad|>", "<|video_pad|>"],
                 "image_text": "<|vision_start|><|image_pad|><|vision_end|>", "pad": "<|endoftext|>"},
    "qwen2_5_vl": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                "<|image_pad|>", "<|video_pad|>"],
                   "image_text": "<|vision_start|><|image_pad|><|vision_end|>", "pad": "<|endoftext|>"},
    "llava": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"],
              "image_text": "<image>\\n", "pad": "<|endoftext|>"},
    "gemma3": {"specials": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                            "<end_of_image>", "<image_soft_token>"],
               "image_text": "<start_of_image>", "pad": "<pad>"},
}
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\\n' }}" + _PARTS
    + "{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


def chat_template(family: VlmFamily) -> str:
    """A ChatML jinja template whose image parts render as the family's image placeholder text."""
    image = "'" + _FAMILY_TOKENS[family]["image_text"] + "'"
    if family == "gemma3":  # Gemma turns (user / model), system text as its own turn
        return _GEMMA_TEMPLATE.replace("IMAGE", image)
    return "{% for message in messages %}" + _CHATML_TURN + _PARTS.replace("IMAGE", image) + _END


@functools.lru_cache(maxsize=4)
def _tokenizer_json(family: str, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_FAMILY_TOKENS[family]["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def make_vlm_tokenizer(family: VlmFamily = "qwen2_vl", vocab_size: int = 600):
    """A byte-level BPE tokenizer with the family's special tokens and a chat template that renders image parts."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {', '.join(FAMILIES)}")
    tokens = _FAMILY_TOKENS[family]
    backend = Tokenizer.from_str(_tokenizer_json(family, vocab_size))
    if family == "gemma3":  # the processor reads boi/eoi/image tokens from the tokenizer, as Gemma 3's does
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<end_of_turn>",
                                      pad_token="<pad>", extra_special_tokens={
                                          "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                          "image_token": "<image_soft_token>"})
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token=tokens["pad"])
    tok.chat_template = chat_template(family)
    tok.model_max_length = 2048
    return tok


def _image_processor(family: VlmFamily):
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56},
                                        patch_size=14, merge_size=2, temporal_patch_size=2)
    if family == "gemma3":
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        return Gemma3ImageProcessorPil(size={"height": 28, "width": 28})
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def make_vlm_processor(family: VlmFamily = "qwen2_vl"):
    """The family's processor (tokenizer + small image processor + chat template), usable without torchvision."""
    from sftlab.vision.load import image_only_processor

    tokenizer = make_vlm_tokenizer(family)
    if family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as base
        extra = {}
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as base
        extra = {}
    elif family == "gemma3":
        from transformers import Gemma3Processor as base
        extra = {"image_seq_length": 4}
    else:
        from transformers import LlavaProcessor as base
        extra = {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    return image_only_processor(base)(image_processor=_image_processor(family), tokenizer=tokenizer,
                                      chat_template=tokenizer.chat_template, **extra)


def tiny_vlm_config(family: VlmFamily, tokenizer, hidden: int = 64, layers: int = 2, vision_layers: int = 2):
    """A small config of the family: `vision_layers` vision blocks, `layers` language blocks, sized to the tokenizer."""
    ids = dict(bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **ids)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        head_half = hidden // 4 // 2  # mrope splits half the head dimension into temporal/height/width sections
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": [head_half - 2 * (head_half // 3), head_half // 3, head_half // 3]}
        vision = dict(depth=vision_layers, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_vl":
            from transformers import Qwen2VLConfig as config_class

            vision.update(embed_dim=32, hidden_size=hidden, mlp_ratio=2)
        else:  # Qwen2.5-VL: windowed attention in the vision tower, full attention in its last block
            from transformers import Qwen2_5_VLConfig as config_class

            vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=hidden, window_size=56,
                          fullatt_block_indexes=[vision_layers - 1])
        token = tokenizer.convert_tokens_to_ids
        return config_class(text_config=text, vision_config=vision, image_token_id=token("<|image_pad|>"),
                             video_token_id=token("<|video_pad|>"), vision_start_token_id=token("<|vision_start|>"),
                             vision_end_token_id=token("<|vision_end|>"), tie_word_embeddings=False)
    if family == "llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                                  num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32)
        return LlavaConfig(vision_config=vision, text_config=LlamaConfig(**text),
                           image_token_id=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
                           vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=False)
    if family == "gemma3":
        from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

        text.update(num_key_value_heads=1, head_dim=16, sliding_window=64, bos_token_id=tokenizer.bos_token_id)
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                                    num_attention_heads=2, image_size=28, patch_size=14)
        token = tokenizer.convert_tokens_to_ids
        return Gemma3Config(text_config=Gemma3TextConfig(**text), vision_config=vision, mm_tokens_per_image=4,
                            boi_token_index=token("<start_of_image>"), eoi_token_index=token("<end_of_image>"),
                            image_token_index=token("<image_soft_token>"), tie_word_embeddings=True)
    raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {', '.join(FAMILIES)}")


def make_tiny_vlm(family: VlmFamily = "qwen2_vl", processor=None, seed: int = 0, **size):
    """A randomly initialised (seeded) tiny image-text-to-text model of the family."""
    from transformers import AutoModelForImageTextToText

    processor = processor or make_vlm_processor(family)
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(tiny_vlm_config(family, processor.tokenizer, **size))


def save_tiny_vlm(family: VlmFamily, out_dir: str | Path, seed: int = 0, **size) -> Path:
    """Write a tiny VLM, its tokenizer, image processor and chat template to `out_dir` (loadable offline)."""
    out = Path(out_dir)
    processor = make_vlm_processor(family)
    model = make_tiny_vlm(family, processor, seed=seed, **size)
    model.save_pretrained(out)
    processor.save_pretrained(out)  # processor_config.json names the upstream class (e.g. Qwen2VLProcessor)
    return out
