"""Canonical multimodal examples -> token rows through the model's processor, with assistant-only labels.

    row = encode_vision_example(example, processor, max_length=512, mask="assistant", truncation="drop")
    row == {"input_ids": [...], "labels": [...], "images": [...], "status": "ok", "image_tokens": 4}

1. `<image>` placeholders become `{"type": "image"}` content parts and the processor's chat template renders
   the conversation (so each family writes its own image markers, e.g. `<|vision_start|><|image_pad|>...`).
2. Supervised character spans come from rendering prefixes, as `sftlab.data.templates` does for text:
   messages[:i] with the generation prompt must be a prefix of messages[:i+1]; the new text is supervised up
   to and including its last special token (the end-of-turn), never the whitespace after it.
   `mask`: "assistant" (every assistant turn), "last_assistant", or "all" (every text token).
3. The processor expands each image token into the image's patch tokens and tokenizes once
   (`add_special_tokens=False`: the template writes them). Token offsets are mapped back through the
   processor's replacement offsets, so a token is supervised only when it is text inside a supervised span;
   image tokens always get -100.
4. Checks: the number of image tokens in `input_ids` must equal what the processor says the model expects for
   these image sizes (`_get_num_multimodal_tokens`), else a one-line SftlabError naming the record.
5. Length: longer than `max_length` -> `truncation=drop` drops the sample; `left` cuts from the left (keeping
   the last answer whole) only when no image token is cut away, else the sample is dropped and counted as
   `dropped_image_span`; a sample is never cut inside an image span.

Pixel values are not stored in the rows: `sftlab.vision.collate` loads the images and runs the same image
processor per batch, so rows stay small and image token counts were already checked here.
"""

from __future__ import annotations

import re

from sftlab.data.tokenize import fit_length
from sftlab.errors import SftlabError
from sftlab.vision.data import IMAGE_PLACEHOLDER, open_image

IGNORE_INDEX = -100


def to_content_parts(messages: list[dict]) -> list[dict]:
    """Messages whose `<image>` placeholders become image parts (text parts keep everything else)."""
    converted = []
    for message in messages:
        parts = []
        for k, piece in enumerate(message["content"].split(IMAGE_PLACEHOLDER)):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        converted.append({"role": message["role"], "content": parts})
    return converted


def render(processor, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat-template text of `messages` (content parts), as the processor renders it."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _last_special_end(text: str, specials: list[str]) -> int:
    """End offset in `text` of its last special token, else of its text without trailing whitespace."""
    ends = [text.rfind(token) + len(token) for token in specials if token and token in text]
    return max(ends) if ends else len(text.rstrip())


def supervised_spans(processor, messages: list[dict], mask: str, src: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans whose tokens are supervised."""
    parts = to_content_parts(messages)
    full = render(processor, parts)
    if mask == "all":
        return full, [(0, len(full))]
    specials = sorted(set(processor.tokenizer.all_special_tokens), key=len, reverse=True)
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if mask == "last_assistant":
        assistant_turns = assistant_turns[-1:]
    spans = []
    for i in assistant_turns:
        prompt = render(processor, parts[:i], add_generation_prompt=True)
        through = render(processor, parts[: i + 1])
        if not (through.startswith(prompt) and full.startswith(through)):
            raise SftlabError(f"{src}: the processor's chat template rewrites earlier turns (turn {i} is not a prefix "
                              "extension), so the assistant tokens cannot be located; use a prefix-stable template")
        new_text = through[len(prompt):]
        spans.append((len(prompt), len(prompt) + _last_special_end(new_text, specials)))
    return full, spans


def _label_tokens(input_ids: list[int], offsets: list, replacements: list[dict], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: the token id where a text token starts inside a supervised span (original offsets), else -100."""
    moved = sorted((r["new_span"][0], r["new_span"][1], r["span"][1] - r["span"][0]) for r in replacements)
    labels = []
    for token, (start, end) in zip(input_ids, offsets):
        shift, inside_image = 0, False
        for new_start, new_end, old_length in moved:
            if start >= new_end:
                shift += (new_end - new_start) - old_length
            elif end > new_start:
                inside_image = True
                break
        original = start - shift
        supervised = not inside_image and end > start and any(a <= original < b for a, b in spans)
        labels.append(token if supervised else IGNORE_INDEX)
    return labels


def image_token_id(processor) -> int:
    """Id of the token that stands for image features in the model input (Gemma 3: the soft token, not BOI)."""
    specific = getattr(processor.tokenizer, "image_token_id", None)
    return specific if isinstance(specific, int) and specific >= 0 else processor.image_token_id


def expected_image_tokens(processor, images: list) -> int | None:
    """Image tokens the model expects for these images, as the processor computes it (None if it cannot say)."""
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None or not images:
        return None if images else 0
    try:
        data = counter(image_sizes=[[image.height, image.width] for image in images])
    except (NotImplementedError, TypeError, KeyError, AttributeError):
        return None
    counts = getattr(data, "num_image_tokens", None) if not isinstance(data, dict) else data.get("num_image_tokens")
    return int(sum(counts)) if counts is not None else None


def _process(processor, text: str, images: list, src: str) -> dict:
    try:
        return processor(text=[text], images=images or None, add_special_tokens=False, return_offsets_mapping=True,
                         return_text_replacement_offsets=True)
    except ValueError as exc:
        first = re.sub(r"\s+", " ", str(exc)).strip()[:200]
        raise SftlabError(f"{src}: the processor refused this record ({first})") from None


def _first_image_turn_token(processor, messages: list[dict], text: str, offsets: list) -> int:
    """Index of the first token of the turn holding the first image (len(tokens) when there is no image).

    Left truncation may remove tokens before it only, so no image, nor its markers, is ever cut."""
    turn = next((i for i, m in enumerate(messages) if IMAGE_PLACEHOLDER in m["content"]), None)
    if turn is None:
        return len(offsets)
    before = render(processor, to_content_parts(messages[:turn])) if turn else ""
    boundary = len(before) if text.startswith(before) else 0
    return sum(1 for start, end in offsets if end <= boundary)


def encode_vision_example(example: dict, processor, max_length: int, mask: str = "assistant",
                          truncation: str = "drop") -> dict:
    """One canonical multimodal example -> {input_ids, labels, images, status, image_tokens} (see module doc)."""
    src = example.get("_src") or "example"
    text, spans = supervised_spans(processor, example["messages"], mask, src)
    images = [open_image(reference, src) for reference in example.get("images") or []]
    placeholders = text.count(processor.image_token)
    if placeholders != len(images):
        raise SftlabError(f"{src}: the chat template wrote {placeholders} image token(s) {processor.image_token!r} "
                          f"for {len(images)} image(s)")
    encoded = _process(processor, text, images, src)
    input_ids = list(encoded["input_ids"][0])
    replacements = (encoded.get("text_replacement_offsets") or [[]])[0]
    labels = _label_tokens(input_ids, encoded["offset_mapping"][0], replacements, spans)
    found = input_ids.count(image_token_id(processor))
    expected = expected_image_tokens(processor, images)
    if expected is not None and found != expected:
        raise SftlabError(f"{src}: {found} image tokens after processing but the model expects {expected} for "
                          f"{len(images)} image(s) of these sizes (processor._get_num_multimodal_tokens)")
    status = "ok"
    if len(input_ids) > max_length:
        bos_id = processor.tokenizer.bos_token_id
        kept_ids, kept_labels, status = fit_length(input_ids, labels, max_length, truncation, mask == "all", bos_id)
        if status == "cut_left":
            head = 1 if bos_id is not None and input_ids[0] == bos_id else 0  # fit_length keeps a leading BOS
            removed_end = len(input_ids) - (len(kept_ids) - head)
            if removed_end > _first_image_turn_token(processor, example["messages"], text, encoded["offset_mapping"][0]):
                status = "dropped_image_span"
            else:
                input_ids, labels = kept_ids, kept_labels
    if not status.startswith("dropped") and all(label == IGNORE_INDEX for label in labels):
        status = "dropped_no_supervised"
    return {"input_ids": input_ids, "labels": labels, "images": list(example.get("images") or []),
            "status": status, "image_tokens": found}
