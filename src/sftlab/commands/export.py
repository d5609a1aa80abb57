"""`sftlab export RUN_DIR --merge OUT [--dtype float32|bfloat16|float16] [--merge-base dequantized|original]`: fold a
LoRA adapter into its base model (a run that saved a full model is copied to OUT in `--dtype`, `copy_full_model`).

The base named in the adapter's `adapter_config.json` is loaded in float32 (locally, like every model),
the adapter attached, and logits on a few probe texts computed before and after `merge_and_unload()`;
the merged model is cast to `--dtype` (default float32: no cast) and saved to OUT (atomically) with its
tokenizer and `sftlab_export.json`, which records the base, the adapter, the dtype, what it merged into, the
largest absolute logit difference seen on the probes (merged vs unmerged, both float32) and, after a cast, the
largest difference of the saved model's logits from the unmerged float32 ones.

A QLoRA adapter (one with `sftlab_qlora.json`, `sftlab.models.nf4`) trained against the dequantised NF4 weights of
its base, not the original ones. Its unmerged model is therefore the QLoRA model itself (the base loaded in 4-bit
from the recorded dtype, its other weights in float32, the adapter), and by default it merges into that base's
dequantised weights in float32, which reproduces the QLoRA model's logits (up to the bf16 rounding of its 4-bit
matmuls where it trained with bf16 compute); `--merge-base original` merges it into
the original full-precision base instead, which differs from what was trained by the quantisation error
(both measured in tests/test_qlora.py; docs/train.md).

A classification adapter's base gets the adapter's label names in its head (`id2label`, so the merged config.json
names them; `sftlab.models.trained.trained_labels`: the adapter's `sftlab_labels.json`, else its run's
data_stats.json), also recorded as `labels` in sftlab_export.json; with neither, only the head size is known and the
labels are LABEL_0, LABEL_1, ...

A causal LM's chat template goes with it (`sftlab.models.chat_files`): the template the adapter was trained with
(`sftlab.models.trained`: the adapter directory's `sftlab_template.json`, else the run's config.yaml) sets the stop
ids in generation_config.json and the tokenizer's chat_template, and OUT gets its own `sftlab_template.json`.

A model with its own code (config.json's `auto_map`) is loaded only with `--trust-remote-code` (a one-line error naming
it otherwise); transformers copies that code into OUT with the model, so OUT loads as the original did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.models.adapter_vocab import quiet_saved_copies

DTYPES = ("float32", "bfloat16", "float16")
KEY, TRUST_KEY = "RUN_DIR", "--trust-remote-code"  # what load errors name: the command's argument and flag
DEFAULT_PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "关于开展高新技术企业认定工作的通知",
]


def find_adapter(run_dir: Path) -> Path | None:
    """The adapter directory of a run (`RUN/model`) or the directory itself when it is an adapter; None when it holds a
    full model instead (a full, freeze or auto run). One-line errors for anything else, e.g. an unfinished run."""
    from sftlab.infer.loading import check_adapter_weights
    from sftlab.checkpoints import step_dirs

    if not run_dir.is_dir():
        raise SftlabError(f"{run_dir}: no such directory")
    for candidate in (run_dir / "model", run_dir):
        if (candidate / "adapter_config.json").is_file():
            check_adapter_weights(candidate)
            return candidate
    if (run_dir / "model" / "config.json").is_file() or (run_dir / "config.json").is_file():
        return None
    checkpoints = step_dirs(run_dir)
    if checkpoints:
        raise SftlabError(f"{run_dir}: the run has no model/ (it has not finished); export its latest checkpoint "
                          f"({checkpoints[-1][1]}) or finish the run with `sftlab train CONFIG --resume`")
    raise SftlabError(f"{run_dir}: not a run directory or model directory (no model/, adapter_config.json or "
                      "config.json in it)")


def _classifier_labels(adapter_dir: Path) -> list[str] | int:
    """Label names of a classification adapter (`sftlab.models.trained.trained_labels`: its `sftlab_labels.json`, else
    its run's data_stats.json), else the head size read from the adapter weights (the labels then unnamed)."""
    from sftlab.models.adapter_vocab import saved_shapes
    from sftlab.models.trained import trained_labels

    names = trained_labels(adapter_dir)
    if names:
        return names
    for key, shape in saved_shapes(adapter_dir).items():  # .safetensors or .bin
        if key.endswith(("score.weight", "classifier.weight")):
            return int(shape[0])
    raise SftlabError(f"{adapter_dir}: a classification adapter without sftlab_labels.json, its run's data_stats.json "
                      "or a saved head; cannot tell the number of labels")


def _probe_logits(model, tokenizer, probes: list[str]):
    import torch

    with torch.no_grad():
        return [model(**tokenizer(text, return_tensors="pt")).logits.float() for text in probes]


def _max_diff(before, after) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(before, after))


def _save_merged(merged, tokenizer, out_dir: Path, record: dict, template: str | None, overwrite: bool) -> None:
    """Write the merged model, its tokenizer (carrying `template`), sftlab_template.json and sftlab_export.json."""
    from sftlab.io import atomic_dir, atomic_write_json
    from sftlab.models.chat_files import carry_chat_template, write_template_record

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        with carry_chat_template(merged, tokenizer, template) as chat:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_template_record(tmp, chat)
        record["template"] = chat["template"] if chat else None
        atomic_write_json(Path(tmp) / "sftlab_export.json", record)


MERGE_BASES = ("dequantized", "original")


def _merge_base(requested: str | None, qlora: dict | None) -> str:
    """What the adapter merges into: a QLoRA adapter's dequantised NF4 base by default, else the original base."""
    if requested is None:
        return "dequantized" if qlora else "original"
    if requested not in MERGE_BASES:
        raise SftlabError(f"--merge-base {requested!r}: expected one of {', '.join(MERGE_BASES)}")
    if requested == "dequantized" and not qlora:
        raise SftlabError("--merge-base dequantized: this adapter was not trained on a 4-bit base (no sftlab_qlora.json); "
                          "it merges into its original base")
    return requested


def _load_base(base: str, base_key: str, trust_remote_code: bool, adapter_dir: Path, adapter_cfg: dict, tokenizer,
               dtype: str = "float32", quantize_4bit: bool = False):
    """The adapter's base model for its task (a classifier with the run's labels, else a causal LM); errors about it
    name `base_key`, its code runs only with `trust_remote_code`."""
    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_model

    base_cfg = ModelConfig(path=str(base), dtype=dtype, trust_remote_code=trust_remote_code)
    names = dict(quantize_4bit=quantize_4bit, key=base_key, trust_key=TRUST_KEY, adapters=[adapter_dir])
    if adapter_cfg.get("task_type") == "SEQ_CLS":
        labels = _classifier_labels(adapter_dir)
        named = isinstance(labels, list)
        return load_model(base_cfg, "cls", num_labels=None if named else labels,
                          label_names=labels if named else None, tokenizer=tokenizer, **names)
    return load_model(base_cfg, "sft", tokenizer=tokenizer, **names)


def _qlora_reference(load, adapter_dir: Path, qlora: dict, tokenizer, probes: list[str]):
    """The QLoRA model as it trained (`sftlab.models.nf4.as_trained`: 4-bit base from `qlora`'s weights dtype, its
    compute dtype, non-4-bit weights in float32; the adapter): its probe logits; the same with float32 compute where
    it trained in another (None otherwise), which tells the merge's own error from the compute dtype's rounding;
    and its base without the adapter."""
    from peft import PeftModel

    from sftlab.models.nf4 import as_trained

    model = as_trained(load(dtype=qlora["weights_dtype"], quantize_4bit=True), qlora)
    with quiet_saved_copies():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    trained = _probe_logits(peft_model, tokenizer, probes)
    exact = None
    if qlora["compute_dtype"] != "float32":
        exact = _probe_logits(as_trained(peft_model, {**qlora, "compute_dtype": "float32"}), tokenizer, probes)
    return trained, exact, peft_model.unload()


def merge_adapter(run_dir: str | Path, out_dir: str | Path, probes: list[str] | None = None,
                  overwrite: bool = False, dtype: str = "float32", merge_base: str | None = None,
                  trust_remote_code: bool = False) -> dict:
    """Merge the run's LoRA adapter into a float32 copy of its base (a QLoRA adapter: of its dequantised NF4 base,
    unless `merge_base` is 'original'), cast it to `dtype`, save it to `out_dir`, return the record. Code shipped
    with the model runs only with `trust_remote_code`."""
    import functools

    from peft import PeftModel

    from sftlab.config.schema import ModelConfig
    from sftlab.io import check_output_dir
    from sftlab.models.load import adapter_base, has_tokenizer_files, load_tokenizer, resolve_model_path
    from sftlab.models.nf4 import dequantize, read_record
    from sftlab.models.trained import trained_settings

    if dtype not in DTYPES:
        raise SftlabError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    adapter_dir = find_adapter(run_dir)
    if adapter_dir is None:
        if merge_base is not None:
            raise SftlabError(f"--merge-base {merge_base}: {run_dir} holds a full model, with no adapter to merge")
        return copy_full_model(run_dir, out_dir, probes, overwrite, dtype, trust_remote_code)
    qlora = read_record(adapter_dir)
    merge_base = _merge_base(merge_base, qlora)
    config_file = adapter_dir / "adapter_config.json"
    base_key = f"{config_file}: base_model_name_or_path"
    base = resolve_model_path(adapter_base(config_file), base_key)
    check_output_dir(out_dir, overwrite, inputs=(run_dir, adapter_dir, base))
    adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    template = None if adapter_cfg.get("task_type") == "SEQ_CLS" else trained_settings(adapter_dir).template
    own = has_tokenizer_files(adapter_dir)
    tokenizer = load_tokenizer(ModelConfig(path=str(adapter_dir if own else base), trust_remote_code=trust_remote_code),
                               KEY if own else base_key, TRUST_KEY)
    load = functools.partial(_load_base, base, base_key, trust_remote_code, adapter_dir, adapter_cfg, tokenizer)
    probes = probes or DEFAULT_PROBES
    exact = None
    if qlora:  # compared with the model that trained: the 4-bit base and the adapter
        before, exact, four_bit_base = _qlora_reference(load, adapter_dir, qlora, tokenizer, probes)
        model = dequantize(four_bit_base).float() if merge_base == "dequantized" else load()
    else:
        model = load()
    with quiet_saved_copies():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    if not qlora:
        before = _probe_logits(peft_model, tokenizer, probes)
    merged = peft_model.merge_and_unload()
    record = {"base": str(base), "adapter": str(adapter_dir.resolve()), "task_type": adapter_cfg.get("task_type"),
              "dtype": dtype, "merge_base": merge_base, "qlora": qlora, "probes": len(probes)}
    merged = _measure_merge(merged, tokenizer, probes, before, exact, record)
    _save_merged(merged, tokenizer, out_dir, record, template, overwrite)
    return record


def _measure_merge(merged, tokenizer, probes: list[str], before, exact, record: dict):
    """Fill `record` with the merged model's logit differences (from the adapter's `before`, from the QLoRA model
    computing in float32 `exact`, after the cast to record["dtype"]) and its labels; return the model, cast."""
    import torch

    record["max_abs_logit_diff"] = _max_diff(before, _probe_logits(merged, tokenizer, probes))
    if record["task_type"] == "SEQ_CLS":  # the head's rows, by name (unnamed: LABEL_0, LABEL_1, ...)
        id2label = merged.config.id2label
        record["labels"] = [str(id2label[key]) for key in sorted(id2label, key=int)]
    if exact is not None:  # against the QLoRA model computing in float32: the merge's own error
        record["max_abs_logit_diff_float32_compute"] = _max_diff(exact, _probe_logits(merged, tokenizer, probes))
    if record["dtype"] != "float32":
        merged = merged.to(getattr(torch, record["dtype"]))
        record["max_abs_logit_diff_after_cast"] = _max_diff(before, _probe_logits(merged, tokenizer, probes))
    return merged


def copy_full_model(run_dir: Path, out_dir: Path, probes: list[str] | None, overwrite: bool, dtype: str,
                    trust_remote_code: bool = False) -> dict:
    """A full model (a full, freeze or auto run's model/) saved to `out_dir` in `dtype` with its tokenizer, chat
    template and records, as a merged export is: there is nothing to merge, so the logit difference is that of the
    cast (0 in float32). Code shipped with the model runs only with `trust_remote_code`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from sftlab.config.schema import ModelConfig
    from sftlab.io import check_output_dir
    from sftlab.models.load import check_model_dir, load_tokenizer
    from sftlab.models.trained import run_model_dir, trained_settings

    model_dir = run_model_dir(run_dir) or run_dir
    config = check_model_dir(model_dir, KEY, trust_remote_code, TRUST_KEY)
    if "vision_config" in config:
        raise SftlabError(f"{model_dir}: a full vision-language model; it needs no merge, use it as is")
    check_output_dir(out_dir, overwrite, inputs=(run_dir, model_dir))
    cls = any(str(name).endswith("ForSequenceClassification") for name in config.get("architectures") or [])
    auto = AutoModelForSequenceClassification if cls else AutoModelForCausalLM
    tokenizer = load_tokenizer(ModelConfig(path=str(model_dir), trust_remote_code=trust_remote_code), KEY, TRUST_KEY)
    model = auto.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True,
                                 trust_remote_code=trust_remote_code).eval()
    probes = probes or DEFAULT_PROBES
    record = {"base": None, "source": str(model_dir.resolve()), "adapter": None,
              "task_type": "SEQ_CLS" if cls else "CAUSAL_LM", "dtype": dtype, "merge_base": None, "qlora": None,
              "probes": len(probes), "max_abs_logit_diff": 0.0}
    if dtype != "float32":
        before = _probe_logits(model, tokenizer, probes)
        model = model.to(getattr(torch, dtype))
        record["max_abs_logit_diff_after_cast"] = _max_diff(before, _probe_logits(model, tokenizer, probes))
    template = None if cls else trained_settings(model_dir).template
    _save_merged(model, tokenizer, out_dir, record, template, overwrite)
    return record


MERGE_TOLERANCE = 1e-3  # float32 merges reproduce the adapter's logits to about 1e-6 on the probes


def merge_warning(record: dict) -> str | None:
    """A warning when a float32 merge's logits differ from the adapter's by more than `MERGE_TOLERANCE` (a QLoRA
    merge into the dequantised base is judged against the QLoRA model computing in float32; one into the original
    base differs by the quantisation error by design)."""
    if record["adapter"] is None or (record.get("qlora") and record.get("merge_base") != "dequantized"):
        return None
    diff = record.get("max_abs_logit_diff_float32_compute", record["max_abs_logit_diff"])
    if diff <= MERGE_TOLERANCE:
        return None
    return (f"warning: the merged model's logits differ from the adapter's by {diff:.3g} on the probes (a float32 "
            f"merge stays within {MERGE_TOLERANCE:g}); check the adapter before using {record.get('out', 'OUT')}")


def _export(args) -> int:
    if not args.merge:
        raise SftlabError("sftlab export needs --merge OUT: the directory it writes the merged model to")
    record = merge_adapter(args.run_dir, args.merge, probes=args.probe, overwrite=args.overwrite, dtype=args.dtype,
                           merge_base=args.merge_base, trust_remote_code=args.trust_remote_code)
    cast = record.get("max_abs_logit_diff_after_cast")
    if record["adapter"] is None:
        print(f"copied the full model {record['source']} -> {args.merge} (no adapter to merge)"
              + (f"; saved in {record['dtype']}: max |saved - float32| logit difference on {record['probes']} probe "
                 f"inputs {cast:.3g}" if cast is not None else ""))
        return 0
    into = "the dequantised NF4 base of " if record["merge_base"] == "dequantized" else ""
    exact = record.get("max_abs_logit_diff_float32_compute")
    compute = (record.get("qlora") or {}).get("compute_dtype")
    print(f"merged {record['adapter']} into {into}{record['base']} -> {args.merge}; max |merged - unmerged| logit "
          f"difference on {record['probes']} probe inputs: {record['max_abs_logit_diff']:.3g}"
          + (f" ({exact:.3g} against the QLoRA model computing in float32: the rest is its {compute} rounding)"
             if exact is not None else "")
          + (f" (saved in {record['dtype']}: {cast:.3g})" if cast is not None else ""))
    warning = merge_warning({**record, "out": str(args.merge)})
    if warning:
        print(warning, file=sys.stderr)
    return 0


def register(registry) -> None:
    """Add `sftlab export`."""
    parser = registry.top.add_parser(
        "export", help="merge a LoRA run's adapter into a full model (a full, freeze or auto run: copy its model)",
        description="Write a standalone model directory from a run: a LoRA (or QLoRA) adapter merged into its base and "
                    "checked against the unmerged model's logits, or a full, freeze or auto run's model copied, in "
                    "--dtype, with the tokenizer and chat template (docs/train.md).")
    from sftlab.commands.generate import add_trust_argument

    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (with model/) or an adapter directory")
    parser.add_argument("--merge", metavar="OUT", help="write the merged model here")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the saved merged weights (default float32; the merge itself is done in float32)")
    parser.add_argument("--merge-base", choices=MERGE_BASES, default=None,
                        help="a QLoRA adapter merges into its dequantised NF4 base, the weights it trained against "
                             "(default), or into the original full-precision base (original); other adapters into "
                             "their original base")
    parser.add_argument("--probe", action="append", help="probe text for the merged-vs-unmerged check (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_trust_argument(parser)
    parser.set_defaults(func=_export)
