"""Multimodal token rows -> model batches: padded text plus the images' pixel values and extra model inputs.

    collate = make_vision_collator(processor)
    batch = collate(rows)   # input_ids/attention_mask/labels [B,T], pixel_values, image_grid_thw (Qwen2-VL),
                            # mm_token_type_ids (Qwen2-VL) or token_type_ids (Gemma 3)

Text is padded with `sftlab.data.collate.pad_collate` (right padding, labels -100 on padding). The rows'
images (in row order, then image order, which is the order of the image tokens in the batch) are loaded and
run through the processor's image processor, giving exactly the inputs the processor would give for the
same text and images. Rows hold no pixels, so the token cache stays small. Packing is not supported for
image rows.
"""

from __future__ import annotations

from typing import Callable

from sftlab.data.collate import pad_collate
from sftlab.errors import SftlabError
from sftlab.vision.data import open_image


def token_type_key(processor) -> str | None:
    """The model input that marks image tokens: mm_token_type_ids, token_type_ids (Gemma 3), or None."""
    if not getattr(processor, "return_mm_token_type_ids", False):
        return None
    names = list(getattr(processor, "model_input_names", []) or [])
    if "token_type_ids" in names and "mm_token_type_ids" not in names:
        return "token_type_ids"
    return "mm_token_type_ids"


def vision_collate(rows: list[dict], processor, pad_id: int) -> dict:
    """One padded batch with pixel inputs for the rows' images (see module docstring)."""
    import torch

    batch = pad_collate([{"input_ids": row["input_ids"], "labels": row["labels"]} for row in rows], pad_id)
    references = [reference for row in rows for reference in (row.get("images") or [])]
    key = token_type_key(processor)
    if key is not None:
        types = processor.create_mm_token_type_ids(batch["input_ids"].tolist())
        batch[key] = torch.tensor(types, dtype=torch.long)
    if not references:
        return batch
    images = [open_image(reference) for reference in references]
    pixels = processor.image_processor(images, return_tensors="pt")
    for name, value in pixels.items():
        if isinstance(value, torch.Tensor):
            batch[name] = value
    found = int((batch["input_ids"] == processor.image_token_id).sum())
    if found == 0:
        raise SftlabError(f"a batch has {len(images)} image(s) but no image token; the rows were not encoded "
                          "by sftlab.vision.encode")
    return batch


def make_vision_collator(processor, pad_id: int | None = None) -> Callable[[list[dict]], dict]:
    """The collate function for image+text rows (pad id: the processor's tokenizer's, unless given)."""
    pad = pad_id if pad_id is not None else processor.tokenizer.pad_token_id
    return lambda rows: vision_collate(rows, processor, pad)
