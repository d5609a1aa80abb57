"""The four evaluation tasks over canonical examples: lm, generation, labels, ranking.

Each `run_*` function takes a loaded model and tokenizer, a list of examples and `EvalOptions`, and
returns `(metrics, predictions)`: a metrics dict (see `sftlab.eval.metrics`) and one row per
example with the prediction beside its reference.

Example shapes:
- lm: `{"messages": [...]}` (loss on the tokens the training mask supervises) or `{"text": ...}` (all tokens).
- generation: `{"messages": [..., {"role": "assistant", "content": reference}]}`.
- labels: `{"messages": [..., {"role": "assistant", "content": label}]}` or `{"text": ..., "label": ...}`.
- ranking: one row per query, `{"query": id, "messages": [prompt...], "candidates": [{"id": ..., "text": ...,
  "relevant": 0|1|2|...}, ...]}` (a relevance grade: above 0 is relevant, NDCG's gain is the grade). A candidate with `"text"` is scored by the likelihood of that text as the
  assistant answer to the query's messages; a candidate with its own `"messages"` (a prompt that shows
  query and candidate together) is scored by the probability of the positive label (`--positive`,
  default `yes`) among `--labels` (default `yes,no`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.eval import metrics as M
from sftlab.eval import scoring


@dataclass
class EvalOptions:
    """How to evaluate: template, batching, generation settings, label set and method, ranking cut-offs."""

    template: str = "auto"
    mask: str = "assistant"
    batch_size: int = 8
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    labels: list[str] | None = None
    label_method: str = "likelihood"  # likelihood | generate | head
    positive: str | None = None
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    segmenter: str = "char"
    # longer inputs: cut from the left as training cuts (chats, prompts), windows (lm texts), truncated (cls head)
    max_length: int = 1024


def split_prompt(example: dict) -> tuple[list[dict], str]:
    """(prompt messages, target) of a label/generation example; the target is the last assistant turn or `label`."""
    where = example.get("_src", "example")
    if "messages" in example:
        messages = example["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise SftlabError(f"{where}: the last message must be the assistant's answer (the reference)")
        return list(messages[:-1]), str(messages[-1].get("content", ""))
    if "text" in example and "label" in example:
        return [{"role": "user", "content": str(example["text"])}], str(example["label"])
    raise SftlabError(f"{where}: expected 'messages' ending with an assistant answer, or 'text' and 'label'")


def resolve_labels(examples: list[dict], opts: EvalOptions) -> list[str]:
    """The label set: `opts.labels` or the sorted targets seen; every target must belong to it."""
    targets = [split_prompt(e)[1] for e in examples]
    labels = list(opts.labels) if opts.labels else sorted(set(targets))
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SftlabError(f"labels: {', '.join(map(repr, repeated))} given more than once in {labels}")
    check_targets(examples, targets, labels)
    if len(labels) < 2:
        where = examples[0].get("_src", "the data").rsplit(":", 1)[0] if examples else "the data"
        raise SftlabError(f"labels: need at least 2 labels, got {labels}" + ("" if opts.labels else
                          f" (the only label in {where}); pass the whole label set with --labels"))
    return labels


def check_targets(examples: list[dict], targets: list[str], labels: list[str], what: str = "label") -> None:
    """Fail, naming the example's line, on the first target outside `labels`."""
    known = set(labels)
    for example, target in zip(examples, targets):
        if target not in known:
            raise SftlabError(f"{example.get('_src', 'example')}: {what} {target!r} is not in the label set {labels}")


def parse_label(text: str, labels: list[str]) -> str | None:
    """Map a generated answer to a label: exact (case-insensitive, trimmed) match, else the single label
    whose name appears in the text as a whole word; None when no label or several labels match."""
    cleaned = text.strip().strip(".。!！\"'` ").casefold()
    for label in labels:
        if cleaned == label.casefold():
            return label
    found = [label for label in labels
             if re.search(rf"(?<!\w){re.escape(label.casefold())}(?!\w)", text.casefold())]
    return found[0] if len(found) == 1 else None


def run_lm(model, tokenizer, examples: list[dict], opts: EvalOptions) -> tuple[dict, list[dict]]:
    """Loss and perplexity per supervised token (the training mask for chats; for text every token after the
    first, the end-of-sequence token appended as training does, in `text_windows` when longer than max_length),
    summed over all examples before dividing. Examples are encoded as they are scored (`scoring.score_rows`)."""
    owners: list[int] = []  # owners[i]: the example row i belongs to (each_assistant: several rows per example)

    def rows():
        for index, example in enumerate(examples):
            encoded = _lm_rows(tokenizer, example, opts)
            owners.extend([index] * len(encoded))
            yield from encoded

    sums, counts = [0.0] * len(examples), [0] * len(examples)
    with scoring.progress(len(examples), "scoring examples") as bar:
        for row, (logprob, count) in enumerate(scoring.score_rows(model, rows(), opts.batch_size, opts.max_length,
                                                                  tokenizer.bos_token_id)):
            owner = owners[row]
            sums[owner] += logprob
            counts[owner] += count
            bar.update(owner - bar.n)  # the examples before this row's are done
        bar.update(len(examples) - bar.n)
    predictions = [{"_src": e.get("_src"), "nll": -logprob, "tokens": count}
                   for e, logprob, count in zip(examples, sums, counts)]
    return M.lm_metrics(-sum(sums), sum(counts)), predictions


def _lm_rows(tokenizer, example: dict, opts: EvalOptions) -> list[tuple[list[int], list[int]]]:
    """The (ids, labels) rows one lm example is scored as."""
    if "messages" in example:
        return scoring.encode_for_loss(tokenizer, example, opts.template, opts.mask)
    if "text" in example:
        ids = tokenizer(str(example["text"]), add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]  # training supervises the end of each document too (data/tokenize.py)
        return text_windows(ids, opts.max_length)
    raise SftlabError(f"{example.get('_src', 'example')}: lm evaluation needs 'messages' or 'text'")


def text_windows(ids: list[int], max_length: int | None) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) rows that score every token of a text after the first exactly once: the whole text when it
    fits in `max_length`, else windows of `max_length` tokens, each starting with the previous window's last token
    as unscored context (a long document is scored whole, not only its last `max_length` tokens)."""
    if not max_length or max_length < 2 or len(ids) <= max_length:
        return [(ids, list(ids))]
    rows = [(ids[:max_length], list(ids[:max_length]))]
    for start in range(max_length - 1, len(ids) - 1, max_length - 1):
        window = ids[start:start + max_length]
        rows.append((window, [scoring.IGNORE] + window[1:]))
    return rows


def run_generation(model, tokenizer, examples: list[dict], opts: EvalOptions) -> tuple[dict, list[dict]]:
    """Generate an answer per prompt; exact match, BLEU-4, ROUGE-1/2/L against the references."""
    prompts, references = zip(*(split_prompt(e) for e in examples)) if examples else ((), ())
    texts = scoring.generate_texts(model, tokenizer, list(prompts), opts.template, opts.max_new_tokens, opts.do_sample,
                                   opts.temperature, opts.top_p, opts.seed, opts.batch_size, opts.max_length)
    predictions = [{"_src": e.get("_src"), "reference": ref, "prediction": text,
                    "exact_match": M.normalize_answer(text) == M.normalize_answer(ref)}
                   for e, ref, text in zip(examples, references, texts)]
    return M.generation_metrics(texts, list(references), opts.segmenter), predictions


def predict_labels(model, tokenizer, examples: list[dict], labels: list[str], opts: EvalOptions):
    """(predicted labels or None, probabilities or None, raw generations or None) by the chosen method."""
    prompts = [split_prompt(e)[0] for e in examples]
    if opts.label_method == "head":
        texts = [e["text"] if "text" in e else prompts[i][-1]["content"] for i, e in enumerate(examples)]
        probs = scoring.classify_with_head(model, tokenizer, texts, opts.batch_size, opts.max_length)
        return [labels[max(range(len(p)), key=p.__getitem__)] for p in probs], probs, None
    if opts.label_method == "generate":
        texts = scoring.generate_texts(model, tokenizer, prompts, opts.template, opts.max_new_tokens, opts.do_sample,
                                       opts.temperature, opts.top_p, opts.seed, opts.batch_size, opts.max_length)
        return [parse_label(t, labels) for t in texts], None, texts
    if opts.label_method != "likelihood":
        raise SftlabError(f"label method {opts.label_method!r}: expected likelihood, generate or head")
    scores = scoring.score_continuations(model, tokenizer, prompts, [labels] * len(prompts), opts.template,
                                         opts.batch_size, opts.max_length)
    probs = [scoring.softmax(row) for row in scores]
    return [labels[max(range(len(row)), key=row.__getitem__)] for row in scores], probs, None


def run_labels(model, tokenizer, examples: list[dict], opts: EvalOptions) -> tuple[dict, Sequence[dict]]:
    """Classify each example (head, likelihood or parsed generation) and compute label metrics; the prediction
    rows are a `LabelRows`, each made when it is read."""
    labels = resolve_labels(examples, opts)
    if opts.positive is not None and opts.positive not in labels:
        raise SftlabError(f"--positive {opts.positive!r} is not one of the labels {labels}")
    if opts.positive is not None and len(labels) != 2:
        raise SftlabError(f"--positive {opts.positive!r}: only for two labels (AUC, PR curve); the label set is {labels}")
    predicted, probs, texts = predict_labels(model, tokenizer, examples, labels, opts)
    gold = [split_prompt(e)[1] for e in examples]
    result = M.label_metrics(gold, predicted, labels, probs, opts.positive)
    result["labels"] = labels
    result["method"] = opts.label_method
    return result, LabelRows(examples, gold, predicted, labels, probs, texts)


class LabelRows(Sequence):
    """The predictions.jsonl rows of a label task as a read-only sequence whose rows are made when read (as they are
    written), so a large file's evaluation does not hold a dict per example on top of its predictions."""

    def __init__(self, examples, gold, predicted, labels, probs, texts):
        self._parts = (examples, gold, predicted, labels, probs, texts)

    def __len__(self) -> int:
        return len(self._parts[0])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        examples, gold, predicted, labels, probs, texts = self._parts
        row = {"_src": examples[index].get("_src"), "reference": gold[index], "prediction": predicted[index]}
        if probs is not None:
            row["probs"] = dict(zip(labels, probs[index]))
        if texts is not None:
            row["generated"] = texts[index]
        return row


def _ranking_scores(model, tokenizer, queries: list[dict], opts: EvalOptions) -> list[list[float]]:
    """One score per candidate: answer likelihood ("text") or the positive label's probability ("messages").

    Every (prompt, continuation) pair of every query goes through one batched scoring pass."""
    labels = list(opts.labels or ["yes", "no"])
    positive = opts.positive or "yes"
    if any("messages" in c for q in queries for c in q["candidates"]) and positive not in labels:
        raise SftlabError(f"--positive {positive!r} is not one of the labels {labels} used to score candidate prompts")
    prompts, continuations = [], []
    for query in queries:
        for cand in query["candidates"]:
            if "messages" in cand:
                prompts.append(list(cand["messages"]))
                continuations.append(labels)
            else:
                prompts.append(list(query["messages"]))
                continuations.append([str(cand["text"])])
    flat = iter(scoring.score_continuations(model, tokenizer, prompts, continuations, opts.template,
                                            opts.batch_size, opts.max_length))
    scores = []
    for query in queries:
        row = []
        for cand in query["candidates"]:
            values = next(flat)
            row.append(scoring.softmax(values)[labels.index(positive)] if "messages" in cand else values[0])
        scores.append(row)
    return scores


def check_ranking_rows(queries: list[dict]) -> None:
    """Fail, naming the row and candidate, on a ranking row without candidates, a candidate without a text
    (string) or messages, a `relevant` that is not a grade (an integer >= 0; 2.0 passes, 1.5, -1 and "1" do not),
    or messages that are not a list of chat messages."""
    from sftlab.data.messages import check_messages

    for query in queries:
        where = query.get("_src", "row")
        if not isinstance(query.get("candidates"), list) or not query["candidates"]:
            raise SftlabError(f"{where}: a ranking row needs a non-empty 'candidates' list")
        if "messages" in query:
            check_messages(query["messages"], f"{where}: messages", need_assistant=False)
        for i, cand in enumerate(query["candidates"]):
            at = f"{where}: candidates[{i}]"
            if not isinstance(cand, dict) or ("text" not in cand and "messages" not in cand):
                raise SftlabError(f"{at}: every candidate needs 'text' or 'messages'")
            if "messages" in cand:
                check_messages(cand["messages"], f"{at}.messages", need_assistant=False)
            elif not isinstance(cand["text"], str):
                raise SftlabError(f"{at}: 'text' must be a string, got {cand['text']!r}")
            elif not query.get("messages"):
                raise SftlabError(f"{at}: candidates with 'text' need the query's 'messages' (the prompt)")
            if "relevant" not in cand:
                raise SftlabError(f"{at}: 'relevant' (a grade: 0 not relevant, 1, 2, ... more relevant) is missing")
            try:
                M.relevance_grade(cand["relevant"])
            except ValueError:
                raise SftlabError(f"{at}: 'relevant' must be an integer >= 0 (0 not relevant, 1, 2, ... more "
                                  f"relevant), got {cand['relevant']!r}") from None


def run_ranking(model, tokenizer, queries: list[dict], opts: EvalOptions) -> tuple[dict, list[dict]]:
    """Score every candidate of every query in one batched pass and compute ranking metrics."""
    check_ranking_rows(queries)
    scores = _ranking_scores(model, tokenizer, queries, opts)
    relevance = [[M.relevance_grade(c["relevant"]) for c in q["candidates"]] for q in queries]
    result = M.ranking_metrics(list(zip(scores, relevance)), opts.ks)
    rows = []
    for query, row_scores in zip(queries, scores):
        ranked = sorted(zip(query["candidates"], row_scores), key=lambda pair: -pair[1])
        rows.append({"_src": query.get("_src"), "query": query.get("query"),
                     "ranking": [{"id": c.get("id"), "score": s, "relevant": M.relevance_grade(c["relevant"])}
                                 for c, s in ranked]})
    return result, rows


TASKS = {"lm": run_lm, "generation": run_generation, "labels": run_labels, "ranking": run_ranking}


def load_examples(path: str, task: str, fmt: str = "auto", max_samples: int | None = None,
                  columns: dict[str, str] | None = None) -> list[dict]:
    """Read an evaluation file: canonical examples (`sftlab.data.formats`, file columns renamed by `columns` as
    data.columns does) or, for ranking, raw query rows. A built-in dataset's name (`sftlab.data.sources`) reads
    its file, as in data.train, where no file of that name exists."""
    from sftlab.data.formats import read_rows, to_canonical
    from sftlab.data.sources import builtin_file

    shipped = None if Path(path).expanduser().exists() else builtin_file(str(path))
    if shipped:
        path, fmt = shipped[0], shipped[1] if fmt == "auto" else fmt
    rows = read_rows(path)
    if max_samples:
        rows = rows[:max_samples]
    if task == "ranking":
        check_ranking_rows(rows)
        return rows
    return to_canonical(rows, fmt, columns=columns)
