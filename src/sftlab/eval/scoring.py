"""Model-side evaluation primitives: supervised-token log-probabilities, label likelihood, generation, cls heads.

    scores = score_continuations(model, tok, prompts, [["yes", "no"]] * len(prompts), template="auto")
    texts = generate_texts(model, tok, prompts, template="auto", max_new_tokens=32)

Prompts are lists of chat messages rendered with the training template. A continuation's score is
the summed log-probability of the tokens the training mask supervises for that assistant answer
(the answer and its end-of-turn token). All (prompt, continuation) pairs are scored in right-padded
batches sorted by length, encoded `CHUNK_ROWS` at a time (`score_rows`), so memory does not grow with the file;
generation runs in left-padded batches sorted by length, and a classification head's texts are batched by token
length too. Each pass draws a progress bar on a terminal (`progress`). Rows and prompts longer than `max_length`
are cut as training's `data.truncation: left` cuts them (`cut_left`): a leading BOS token kept, then the last
tokens.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

Messages = list[dict]
IGNORE = -100


def encode_answer(tokenizer, prompt: Messages, answer: str, template: str = "auto") -> tuple[list[int], list[int]]:
    """Token ids of `prompt` + assistant `answer` and labels supervising only that answer (training mask)."""
    messages = list(prompt) + [{"role": "assistant", "content": answer}]
    return encode_supervised(tokenizer, messages, template, mask="last_assistant")


def encode_supervised(tokenizer, messages: Messages, template: str = "auto", mask: str = "assistant",
                      src: str | None = None, tools: list | None = None) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation exactly as training encodes it (`sftlab.data.templates`)."""
    from sftlab.data.templates import encode_conversation

    return encode_conversation(tokenizer, messages, template, mask, src, tools=tools)


def encode_for_loss(tokenizer, example: dict, template: str = "auto", mask: str = "assistant") -> list[tuple]:
    """The (ids, labels) rows training makes of one chat example: one row, or with mask each_assistant one row
    per assistant turn (the conversation up to it, that turn supervised)."""
    from sftlab.data.messages import mask_samples

    src, tools = example.get("_src"), example.get("tools")
    return [encode_supervised(tokenizer, sample, template, sample_mask, src, tools)
            for sample, sample_mask in mask_samples(example["messages"], mask)]


def prompt_ids(tokenizer, messages: Messages, template: str = "auto") -> list[int]:
    """Token ids of `messages` followed by the assistant generation prompt, in the training template."""
    from sftlab.data.templates import render_prompt

    return list(render_prompt(tokenizer, messages, template))


def cut_left(ids: list[int], labels: list[int], max_length: int | None,
             bos_id: int | None) -> tuple[list[int], list[int]]:
    """(ids, labels) cut to `max_length` tokens with training's function (`sftlab.data.tokenize.fit_length` under
    data.truncation left): a leading BOS token (`bos_id`) kept, then the last tokens, so the answer stays whole.

    A row whose answer alone is longer, which training drops, is cut the same way (its answer's last tokens are
    scored); rows that fit are returned unchanged. Below 2 tokens (which training refuses) no BOS is kept."""
    if not max_length or len(ids) <= max_length:
        return ids, labels
    if max_length < 2:
        return ids[-max_length:], labels[-max_length:]
    from sftlab.data.tokenize import fit_length

    ids, labels, _ = fit_length(list(ids), list(labels), max_length, "left", all_supervised=True, bos_id=bos_id)
    return ids, labels


def _device(model):
    return next(model.parameters()).device


CHUNK_ROWS = 4096  # rows encoded, sorted by length and scored together: bounded memory however long the file


def progress(total: int, what: str):
    """`sftlab.progress.count_bar` of `total` `what` ("scoring pairs": unit "pairs")."""
    from sftlab.progress import count_bar

    return count_bar(total, what, what.split()[-1])


def score_rows(model, rows: Iterable[tuple[list[int], list[int]]], batch_size: int = 8, max_length: int | None = None,
               bos_id: int | None = None, bar=None) -> Iterator[tuple[float, int]]:
    """`supervised_logprobs` over an iterable, lazily: rows are taken `CHUNK_ROWS` at a time, each chunk sorted by
    length into batches (little padding) and yielded back in input order, so only one chunk is ever encoded."""
    import itertools

    rows = iter(rows)
    while True:
        chunk = [cut_left(ids, labels, max_length, bos_id) for ids, labels in itertools.islice(rows, CHUNK_ROWS)]
        if not chunk:
            return
        yield from _score_chunk(model, chunk, batch_size, bar)


def _score_chunk(model, rows: list[tuple[list[int], list[int]]], batch_size: int, bar) -> list[tuple[float, int]]:
    import torch
    from sftlab.train.loss import row_logprobs

    device = _device(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(rows[i][0]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                seq, lab = rows[index]
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, : len(lab)] = torch.tensor(lab)
                attention[row, : len(seq)] = 1
            sums, counts = row_logprobs(model, {"input_ids": ids.to(device), "attention_mask": attention.to(device),
                                                "labels": labels.to(device)})
            for row, index in enumerate(batch):
                results[index] = (float(sums[row]), int(counts[row]))
            if bar is not None:
                bar.update(len(batch))
    model.train(was_training)
    return results


def supervised_logprobs(model, rows: Sequence[tuple[list[int], list[int]]], batch_size: int = 8,
                        max_length: int | None = None, bos_id: int | None = None) -> list[tuple[float, int]]:
    """For each (ids, labels) row: (sum of log p(label token | prefix) over supervised positions, count).

    Labels are unshifted (labels[i] is the token at position i, -100 = not supervised), as in training.
    Rows longer than `max_length` are cut from the left as training cuts them (`cut_left`: the leading BOS token
    `bos_id` kept, then the last tokens). Batches are rows of similar length (`score_rows`).
    """
    with progress(len(rows), "scoring rows") as bar:
        return list(score_rows(model, rows, batch_size, max_length, bos_id, bar))


def score_continuations(model, tokenizer, prompts: Sequence[Messages], candidates: Sequence[Sequence[str]],
                        template: str = "auto", batch_size: int = 8, max_length: int | None = None) -> list[list[float]]:
    """Summed log-probability of each candidate answer after its prompt, all pairs in one batched pass (encoded
    `CHUNK_ROWS` pairs at a time, so a large file never holds every pair's token ids). A (prompt, answer) pair that
    occurs more than once is scored once (`unique_pairs`), so equal pairs get equal scores: which batch a pair lands
    in (its padding width) changes the float rounding of its score, and equal candidates must tie in rankings."""
    keys, where = unique_pairs(prompts, candidates)
    pairs = (encode_answer(tokenizer, prompts[p], text, template) for p, text in keys)
    with progress(len(keys), "scoring pairs") as bar:
        scored = [logprob for logprob, _ in score_rows(model, pairs, batch_size, max_length, tokenizer.bos_token_id, bar)]
    flat = [scored[index] for index in where]
    out, position = [], 0
    for options in candidates:
        out.append(flat[position: position + len(options)])
        position += len(options)
    return out


def unique_pairs(prompts: Sequence[Messages], candidates: Sequence[Sequence[str]]) -> tuple[list[tuple[int, str]], list[int]]:
    """(the distinct (prompt index, answer) pairs, each by its first prompt index; for every pair in order, the
    index of its distinct pair). Prompts compare by content (a SHA-1 of their JSON, not the text itself, so
    memory stays small)."""
    import hashlib
    import json

    first: dict[tuple[bytes, str], int] = {}
    keys: list[tuple[int, str]] = []
    where: list[int] = []
    for p, options in enumerate(candidates):
        digest = hashlib.sha1(json.dumps(prompts[p], sort_keys=True, ensure_ascii=False, default=str).encode()).digest()
        for text in options:
            index = first.setdefault((digest, text), len(keys))
            if index == len(keys):
                keys.append((p, text))
            where.append(index)
    return keys, where


def softmax(values: Sequence[float]) -> list[float]:
    """Probabilities from log-scores (numerically stable)."""
    import math

    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def generate_texts(model, tokenizer, prompts: Sequence[Messages], template: str = "auto", max_new_tokens: int = 64,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   batch_size: int = 8, max_length: int | None = None) -> list[str]:
    """Batched greedy (or seeded sampled) completions of each prompt, decoded without special tokens.

    Prompts longer than `max_length` are cut from the left as training cuts them (`cut_left`)."""
    import copy

    import torch

    device = _device(model)
    encoded = [cut_left(ids, ids, max_length, tokenizer.bos_token_id)[0]
               for ids in (prompt_ids(tokenizer, messages, template) for messages in prompts)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = copy.deepcopy(model.generation_config)
    config.update(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                  temperature=temperature if do_sample else None, top_p=top_p if do_sample else None, top_k=None)
    from sftlab.data.templates import stop_token_ids

    config.eos_token_id = stop_token_ids(tokenizer, template) or config.eos_token_id or tokenizer.eos_token_id
    torch.manual_seed(seed)
    texts: list[str] = [""] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    was_training = model.training
    model.eval()
    with torch.no_grad(), progress(len(order), "generating prompts") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, width - len(encoded[index]):] = torch.tensor(encoded[index])
                attention[row, width - len(encoded[index]):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), generation_config=config)
            for row, index in enumerate(batch):
                texts[index] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
            bar.update(len(batch))
    model.train(was_training)
    return texts


def classify_with_head(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 512) -> list[list[float]]:
    """Softmax class probabilities of a sequence-classification model for each text, in the order of `texts`.

    Texts are batched by token length (each batch padded only to its longest text), then put back in order."""
    import torch

    device = _device(model)
    lengths = [len(ids) for start in range(0, len(texts), CHUNK_ROWS)
               for ids in tokenizer(list(texts[start:start + CHUNK_ROWS]), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    probs: list[list[float]] = [[]] * len(texts)
    was_training = model.training
    model.eval()
    with torch.no_grad(), progress(len(texts), "classifying texts") as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}).logits
            for index, row in zip(rows, torch.softmax(logits.float(), dim=-1).tolist()):
                probs[index] = row
            bar.update(len(rows))
    model.train(was_training)
    return probs
