"""Show token rows as training sees them: supervised tokens highlighted, supervised-token ratios, mask checks.

    text = format_row(tokenizer, ids, labels, colour=False)   # "<|im_start|>user\nHi...[[Hello<|im_end|>]]\n"
    check_supervision(rows, stage="sft", mask="assistant")     # SftlabError when a mask is clearly wrong
    drop_lines(prepared.stats, max_length=512, truncation="drop")  # the run log's lines on dropped/cut samples

Supervised tokens (label != -100) are shown in green and bold on a terminal, and between `[[` and `]]`
otherwise (pipes, files, tests). Each maximal run of tokens with the same status is decoded as one
piece, special tokens included, so multi-token characters (Chinese in byte-level BPE) stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftlab.errors import SftlabError

IGNORE_INDEX = -100
GREEN_BOLD, RESET = "\033[1;32m", "\033[0m"
OPEN, CLOSE = "[[", "]]"


@dataclass
class RowView:
    """One token row to show: its ids, labels (or a class label name) and where it came from."""

    input_ids: list[int]
    labels: list[int] | None = None
    label_name: str | None = None
    src: str = ""

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels or [] if label != IGNORE_INDEX)

    @property
    def ratio(self) -> float:
        return self.supervised / len(self.input_ids) if self.input_ids else 0.0


def runs(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Maximal (start, end, supervised) runs of positions with the same supervision status."""
    pieces: list[tuple[int, int, bool]] = []
    for i, label in enumerate(labels):
        supervised = label != IGNORE_INDEX
        if pieces and pieces[-1][2] == supervised:
            pieces[-1] = (pieces[-1][0], i + 1, supervised)
        else:
            pieces.append((i, i + 1, supervised))
    return pieces


def format_row(tokenizer, input_ids: list[int], labels: list[int], colour: bool) -> str:
    """The decoded row with supervised runs highlighted (ANSI colour, or [[...]] when `colour` is off)."""
    out = []
    for start, end, supervised in runs(labels):
        text = tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
        if supervised:
            text = f"{GREEN_BOLD}{text}{RESET}" if colour else f"{OPEN}{text}{CLOSE}"
        out.append(text)
    return "".join(out)


def format_view(tokenizer, index: int, view: RowView, colour: bool) -> str:
    """A header line (sample number, source, token counts) and the highlighted text of one row."""
    where = f" {view.src}" if view.src else ""
    if view.labels is None:
        header = f"--- sample {index}{where}: {len(view.input_ids)} tokens, label {view.label_name!r}"
        return header + "\n" + tokenizer.decode(view.input_ids, skip_special_tokens=False)
    header = (f"--- sample {index}{where}: {len(view.input_ids)} tokens, {view.supervised} supervised "
              f"({view.ratio:.1%})")
    return header + "\n" + format_row(tokenizer, view.input_ids, view.labels, colour)



def check_supervision(stage: str, mask: str, stats: dict, split: str = "train") -> None:
    """Refuse data that would teach nothing, or an sft mask that supervises every token.

    `stats` is the split's tokenisation statistics (`prepare_data(...).stats[split]`). Samples left with
    no supervised token are an error (training would silently drop them). In sft with mask assistant or
    last_assistant, every token being supervised means prompts are trained as answers. mask=all
    supervises everything on purpose, pt supervises everything by design and cls has no token labels.
    """
    if stats.get("dropped_no_supervised"):
        raise SftlabError(f"data ({split}): {stats['dropped_no_supervised']} of {stats['examples']} samples have no "
                          "supervised token, so nothing would be learned from them (check data.mask, data.truncation "
                          "and train.max_length)")
    every = stats.get("tokens", 0) - stats.get("rows", 0)  # a row's first token is never predicted, never counted
    if stage == "sft" and mask != "all" and stats.get("tokens") and stats.get("supervised_tokens") == every:
        raise SftlabError(f"data.mask={mask}: every token of every sample is supervised, so prompts would be trained "
                          "as answers; the chat template or mask is misconfigured (see data.template)")


@dataclass
class Preview:
    """What `sftlab data preview` shows: the first rows, the split's statistics and the template in use."""

    views: list[RowView]
    stats: dict
    template: str = ""


def load_preview(cfg, tokenizer, base_dir=None, count: int = 3, split: str = "train") -> Preview:
    """Prepare the run's data exactly as training does (without packing) and take the first `count` rows."""
    from sftlab.data.pipeline import prepare_data

    unpacked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": False})})
    prepared = prepare_data(unpacked, tokenizer, base_dir)
    rows = prepared.train if split == "train" else prepared.validation
    if rows is None:
        raise SftlabError("data.validation: this run has no validation data (set data.validation or data.val_ratio)")
    # The file:line of each row's example (a dropped sample has no row; each_assistant gives a conversation one row
    # per answer); pt concat blocks mix documents and have none.
    srcs = prepared.train_srcs if split == "train" else prepared.val_srcs
    examples = prepared.train_examples if split == "train" else prepared.val_examples
    if not srcs and len(rows) == len(examples) and not (cfg.train.stage == "pt" and cfg.data.pt_mode == "concat"):
        srcs = [str(example.get("_src", "")) for example in examples]  # image+text data: one row per example
    views = []
    for index, row in enumerate(rows.select(range(min(count, len(rows))))):
        views.append(RowView(
            input_ids=list(row["input_ids"]),
            labels=list(row["labels"]) if "labels" in row else None,
            label_name=prepared.label_names[row["label"]] if "label" in row and prepared.label_names else None,
            src=srcs[index] if index < len(srcs) else "",
        ))
    template = describe_template(tokenizer, cfg.data.template) if cfg.train.stage == "sft" else ""
    return Preview(views=views, stats=prepared.stats[split], template=template)


def describe_template(tokenizer, template: str) -> str:
    """One line naming the chat template in use and its stop tokens."""
    from sftlab.data.templates import BuiltinFormat, chat_format

    fmt = chat_format(tokenizer, template)
    kind = f"built-in {fmt.spec.name}" if isinstance(fmt, BuiltinFormat) else "the tokenizer's own chat template"
    stops = ", ".join(tokenizer.convert_ids_to_tokens(list(fmt.stop_ids)))
    return f"template: {template} -> {kind}; stop tokens: {stops}"


def summary_line(split: str, stats: dict) -> str:
    """Totals of a split: rows, tokens, supervised tokens and their share, and what was dropped or cut."""
    tokens, supervised = stats.get("tokens", 0), stats.get("supervised_tokens", 0)
    line = f"{split}: {stats.get('rows', 0)} rows from {stats.get('examples', 0)} examples, {tokens} tokens"
    if stats.get("label_counts"):
        line += ", labels " + ", ".join(f"{name}={n}" for name, n in stats["label_counts"].items())
    else:
        line += f", {supervised} supervised ({supervised / tokens if tokens else 0:.1%})"
    changes = {k: stats.get(k, 0) for k in ("dropped_too_long", "dropped_answer_too_long", "cut_left", "truncated",
                                            "truncated_tokens")}
    shown = ", ".join(f"{k}={v}" for k, v in changes.items() if v)
    return line + (f"; {shown}" if shown else "")


def drop_lines(stats: dict, max_length: int, truncation: str) -> list[str]:
    """One line per split whose samples tokenisation dropped or cut (`prepare_data(...).stats`), and one per split
    whose rows hold the tokenizer's unknown token (`unknown_line`); none when all fit and every token is known.

    `sftlab train` logs them at the start, so samples that never reach the loss are not only in data_stats.json."""
    lines = []
    for split in ("train", "validation"):
        split_stats = stats.get(split)
        if isinstance(split_stats, dict):
            lines += [line for line in (drop_line(split, split_stats, max_length, truncation),
                                        unknown_line(split, split_stats)) if line]
    return lines


def unknown_line(split: str, stats: dict) -> str | None:
    """'data: 1,204 unknown tokens (12.3% of 9,800) in the train rows, first x.jsonl:3; ...' when the tokenizer's
    unknown token is in them: that text (Chinese through an English-only vocabulary, say) trains as one token."""
    count = stats.get("unknown_tokens")
    if not count:
        return None
    share = f" ({count / stats['tokens']:.1%} of {stats['tokens']:,})" if stats.get("tokens") else ""
    return (f"data: {count:,} unknown tokens{share} in the {split} rows, first {stats.get('unknown_first') or '?'}; "
            "the tokenizer cannot represent that text, which trains as its unknown token")


def drop_line(split: str, stats: dict, max_length: int, truncation: str, noun: str = "samples",
              ledger: str = "data_stats.json") -> str | None:
    """'data: dropped 12 of 400 train samples longer than train.max_length=512 (data.truncation: drop); ...'.

    Truncated samples (pt documents, cls texts) are counted with the tokens cut from their ends:
    'truncated 3 of 40 train samples to train.max_length=512 (1,204 tokens cut)'. A streamed corpus's documents
    (`StreamCounts.line`) pass their own noun and the file that counts them."""
    limit, policy = f"train.max_length={max_length}", f"(data.truncation: {truncation})"
    cut_tokens = f" ({stats['truncated_tokens']:,} tokens cut)" if stats.get("truncated_tokens") else ""
    changes = [("dropped", "dropped_too_long", f"longer than {limit} {policy}"),
               ("dropped", "dropped_answer_too_long", f"whose last answer alone is longer than {limit} {policy}"),
               ("dropped", "dropped_image_span", f"that could only be cut to {limit} inside an image {policy}"),
               ("cut", "cut_left", f"from the left to {limit} {policy}"),
               ("truncated", "truncated", f"to {limit}{cut_tokens}"),
               ("dropped", "dropped_no_supervised", "left with no supervised token (they add nothing to the loss)")]
    parts = [(verb, stats[key], reason) for verb, key, reason in changes if stats.get(key)]
    if not parts:
        return None
    (verb, count, reason), rest = parts[0], parts[1:]
    examples = stats.get("examples")
    text = f"{verb} {count:,} of {'?' if examples is None else f'{examples:,}'} {split} {noun} {reason}"
    text += "".join(f", {verb} {count:,} {reason}" for verb, count, reason in rest)
    return f"data: {text}; {ledger} counts them"
