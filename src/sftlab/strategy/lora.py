"""strategy.kind=lora: wrap the model in a peft LoRA adapter (rank, alpha, dropout, rsLoRA, DoRA).

`strategy.lora.target_modules` is `all-linear`, or a list of module names (`q_proj`, matching any
module whose name ends in `.q_proj`) and globs (`*.self_attn.*_proj`, matched against the full module
name). Every entry must match at least one adaptable module, else SftlabError (with a hint: the name in its right
case, what this model calls another family's module, or a near spelling: `target_hint`); so must every
`modules_to_save` entry, which may not name a module a listed target adapts (it trains in full or gets an
adapter). A classifier's head is added to `modules_to_save` so it trains in full and is saved with the adapter; a
target that names only the head is refused, and a glob's matches inside the head are left to it.
On a 4-bit base (`strategy.lora.quantize_4bit`, QLoRA: `sftlab.models.nf4`) peft's
`prepare_model_for_kbit_training` first casts the weights that are not 4-bit to float32.
"""

from __future__ import annotations

import fnmatch
import re

from sftlab.errors import SftlabError
from sftlab.strategy.structure import (FAMILY_NAMES, GLOB_CHARS, close_hint, head_module_names, is_classifier,
                                      role_parts, tied_partners)

KEY = "strategy.lora.target_modules"


def target_regex(target: str) -> str:
    """A regex (for `re.fullmatch` on the full module name) equivalent to one target name or glob."""
    if GLOB_CHARS & set(target):
        return fnmatch.translate(target)
    return rf"(?:.*\.)?{re.escape(target)}"


def adaptable_modules(model) -> list[str]:
    """Names of leaf modules LoRA can wrap (Linear, GPT-2's Conv1D, Embedding)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def resolve_targets(model, targets) -> str | list[str]:
    """Check every target matches an adaptable module; return what peft's `target_modules` takes."""
    if targets == "all-linear":
        return "all-linear"
    if isinstance(targets, str):
        targets = [targets]
    candidates = adaptable_modules(model)
    heads = head_module_names(model) if is_classifier(model) else []
    matched: list[str] = []
    for target in targets:
        pattern = target_regex(target)
        hits = [name for name in candidates if re.fullmatch(pattern, name)]
        if not hits:
            suffixes = sorted({name.rsplit(".", 1)[-1] for name in candidates})
            raise SftlabError(f"{KEY}: {target!r} matches no linear module; this model has: {', '.join(suffixes)}"
                              f"{target_hint(target, candidates)}")
        inside = [name for name in hits if name.split(".", 1)[0] not in heads]  # the head trains in full instead
        if not inside:
            raise SftlabError(f"{KEY}: {target!r} is the classification head ({', '.join(heads)}), which trains in "
                              "full beside the adapters (modules_to_save); name modules of the base model")
        refuse_tied(model, target, inside)
        matched += inside
    # peft gets exactly the linear modules the globs matched (a glob may also match containers, which peft refuses)
    return "|".join(re.escape(name) for name in dict.fromkeys(matched))


def target_hint(target: str, candidates: list[str]) -> str:
    """'; did you mean ...?' for a target that matches nothing: the module it names in another case (peft matches
    case-sensitively), else what this model calls the kind of module another family's name means (`q_proj` on GPT-2:
    its attention's c_attn, c_proj), else a name one typo away."""
    hits = [name for name in candidates if re.fullmatch(target_regex(target), name, re.IGNORECASE)]
    if hits:
        if GLOB_CHARS & set(target):
            return f"; module names are case-sensitive, and only ignoring case does it match {hits[0]}"
        named = ".".join(hits[0].split(".")[-target.count(".") - 1:])
        return f"; did you mean {named!r}? (module names are case-sensitive)"
    words = [w for w in (w.strip("*?[]").lower() for w in target.split(".")) if w and not w.isdigit()]
    suffixes = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in candidates))
    for word in words:
        if word in FAMILY_NAMES:
            role = FAMILY_NAMES[word]
            own = [suffix for suffix in suffixes if any(
                part in role_parts(role, name.split(".")) for name in candidates if name.endswith("." + suffix)
                for part in name.split(".")[:-1])]
            return f"; this model has no {word}: " + (f"the linear modules in its {role} are {', '.join(own)}" if own
                                                      else f"nor any {role} module")
    return close_hint(words, suffixes, 0.8)


def refuse_tied(model, target: str, modules: list[str]) -> None:
    """An adapter on a weight tied to another (GPT-2's and Gemma's lm_head and input embedding) trains fine, but merging
    it adds its update to the one shared tensor, so both ends change and the merged model is not the adapter's
    (logits 0.6-9.7 apart on the tiny models): refused, pointing at modules_to_save, which trains an untied copy."""
    tied = tied_partners(model)
    for module in modules:
        if others := tied.get(f"{module}.weight"):
            raise SftlabError(f"{KEY}: {target!r} adapts {module}, whose weight is tied to {', '.join(others)}: merging "
                              "the adapter would change both; train it in full with strategy.lora.modules_to_save "
                              f"(an untied copy) or target other modules")


def resolve_modules_to_save(model, requested: list[str], targets: str = "all-linear") -> list[str]:
    """User `modules_to_save` (each must name a module, and none one that `targets`, what `resolve_targets` made of
    `strategy.lora.target_modules`, gives an adapter) plus a classifier's head."""
    names = [name for name, _ in model.named_modules()]
    adapted = set() if targets == "all-linear" else {name for name in names if re.fullmatch(targets, name)}
    for wanted in requested:
        hits = {name for name in names if name == wanted or name.endswith("." + wanted)}
        if not hits:
            raise SftlabError(f"strategy.lora.modules_to_save: {wanted!r} matches no module")
        if hits & adapted:
            raise SftlabError(f"strategy.lora.modules_to_save: {wanted!r} is also in {KEY} "
                              f"({sorted(hits & adapted)[0]}); a module gets an adapter or trains in full, not both")
    extra = head_module_names(model) if is_classifier(model) else []
    return list(dict.fromkeys([*requested, *extra]))


def saved_notes(model, requested: list[str]) -> list[str]:
    """The trainable line's words on `modules_to_save` entries (not a classifier's head, noted apart): they train in
    full, and one tied to another weight trains an untied copy, so that other weight stays as it was."""
    if not requested:
        return []
    notes = [f"{', '.join(requested)} train{'s' if len(requested) == 1 else ''} in full (modules_to_save)"]
    tied = tied_partners(model)
    for name, _ in model.named_modules():
        if any(name == wanted or name.endswith("." + wanted) for wanted in requested) and f"{name}.weight" in tied:
            others = ", ".join(tied[f"{name}.weight"])
            notes.append(f"{name}.weight is tied to {others}: modules_to_save trains an untied copy of it, so {others} "
                         "stays as it was (a merged export keeps them apart)")
    return notes


def apply_lora(model, lora_cfg):
    """Return (peft model, details, notes) with only the adapter (and modules_to_save) trainable.

    A model that already carries an adapter (model.adapter) keeps it and trains it further."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if isinstance(model, PeftModel):
        return continue_adapter(model)

    targets = resolve_targets(model, lora_cfg.target_modules)
    to_save = resolve_modules_to_save(model, list(lora_cfg.modules_to_save), targets)
    saved = saved_notes(model, list(lora_cfg.modules_to_save))  # before peft wraps (and so unties) them
    classifier = is_classifier(model)
    heads = head_module_names(model) if classifier else []
    four_bit = getattr(model, "is_loaded_in_4bit", False)
    if four_bit:  # QLoRA: the weights that are not 4-bit to float32, inputs require grad
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=targets, use_rslora=lora_cfg.rslora, use_dora=lora_cfg.dora,
                        modules_to_save=list(to_save) or None,
                        task_type=TaskType.SEQ_CLS if classifier else TaskType.CAUSAL_LM)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise SftlabError(f"{KEY}: peft refused the adapter ({str(exc).splitlines()[0]})") from None
    details = adapter_details(peft_model, to_save)
    notes = [_note(details), *saved]
    if four_bit:
        notes.append(_four_bit_note(model))
    if heads:
        notes.append(f"classification head ({', '.join(heads)}) trains in full (modules_to_save)")
    return peft_model, details, notes


def continue_adapter(peft_model):
    """(peft model, details, notes) for an adapter loaded from model.adapter and trained further: its own
    rank, alpha and targets (from its adapter_config.json), not strategy.lora's."""
    config = peft_model.peft_config[peft_model.active_adapter]
    details = {**adapter_details(peft_model, sorted(config.modules_to_save or [])),
               "continued_from": getattr(peft_model, "sftlab_adapter_dir", None)}
    notes = [f"{_note(details)}: the adapter of model.adapter, trained further (its adapter_config.json's "
             "settings; strategy.lora's rank, alpha and targets are not applied)"]
    return peft_model, details, notes


def adapter_details(peft_model, modules_to_save: list[str]) -> dict:
    """The trainable report's details of a peft model's active LoRA adapter, from its config."""
    config = peft_model.peft_config[peft_model.active_adapter]
    wrapped = sorted({name.rsplit(".", 1)[-1] for name in peft_model.targeted_module_names})
    return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "rslora": config.use_rslora, "dora": config.use_dora, "target_modules": wrapped,
            "adapted_modules": len(peft_model.targeted_module_names), "modules_to_save": modules_to_save}


def _four_bit_note(model) -> str:
    from sftlab.models.nf4 import layer_compute_dtype, quantized_weights

    return (f"QLoRA: {len(quantized_weights(model))} linear weights NF4 4-bit (bitsandbytes, double quantisation), "
            f"computing in {layer_compute_dtype(model)}")


def _note(details: dict) -> str:
    return f"LoRA r={details['rank']} on {', '.join(details['target_modules'])}"
