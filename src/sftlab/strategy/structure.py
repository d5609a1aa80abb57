"""Find things in a model by its structure: the block list, the classification head, tied weights, globs.

Shared by the freeze, lora and auto strategies so they agree on what "layer 3", "the head" and
"`*.self_attn.*`" mean for every architecture.
"""

from __future__ import annotations

import fnmatch

from sftlab.errors import SftlabError

GLOB_CHARS = set("*?[")


def layer_count(model) -> int | None:
    """Number of transformer blocks the config declares (num_hidden_layers / n_layer), if any."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def find_layer_list(model) -> tuple[str, list]:
    """The ModuleList of transformer blocks (e.g. `model.layers`, `transformer.h`, `bert.encoder.layer`).

    Picks the ModuleList whose length equals the configured block count and whose children share a
    class; raises SftlabError when the model has none (or several equally plausible ones).
    """
    import torch

    expected = layer_count(model)
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if expected is None or len(module) == expected:
            candidates.append((name, list(module)))
    if len(candidates) > 1:  # a vision-language model: its blocks are the language model's, not the vision tower's
        from sftlab.vision.parts import drop_vision_layer_lists

        candidates = drop_vision_layer_lists(model, candidates) or candidates
    if not candidates:
        raise SftlabError(f"strategy: cannot find the list of transformer blocks in {type(model).__name__} "
                          f"(no ModuleList of {expected} identical blocks); use strategy.freeze.modules globs instead")
    if len(candidates) > 1 and expected is None:
        names = ", ".join(name for name, _ in candidates)
        raise SftlabError(f"strategy: several block lists in {type(model).__name__} ({names}); "
                          "use strategy.freeze.modules globs instead")
    return candidates[0]


def is_classifier(model) -> bool:
    """True for sequence-classification models (their head is new and always trains)."""
    return type(model).__name__.endswith("ForSequenceClassification")


def head_module_names(model) -> list[str]:
    """Top-level modules of a classifier outside its base model that own parameters (e.g. `score`, `classifier`)."""
    prefix = getattr(model, "base_model_prefix", "")
    names = []
    for name, module in model.named_children():
        if name != prefix and any(True for _ in module.parameters()):
            names.append(name)
    return names


def glob_matches(pattern: str, name: str) -> bool:
    """Whether a glob names this parameter or module: exactly, as a prefix module, or as a suffix/segment.

    `lm_head` matches `lm_head.weight`; `*.bias` matches every bias; `score` matches `score.weight`;
    `self_attn` matches `model.layers.0.self_attn.q_proj.weight`. Case is ignored, so `*norm*` also
    matches BERT's `LayerNorm`.
    """
    name, pattern = name.lower(), pattern.lower()
    return any(fnmatch.fnmatchcase(name, form) for form in (pattern, f"{pattern}.*", f"*.{pattern}", f"*.{pattern}.*"))


def match_globs(patterns: list[str], names: list[str], key: str) -> set[str]:
    """Names matched by any pattern; a pattern that matches nothing raises SftlabError naming `key`, with a hint."""
    matched: set[str] = set()
    for pattern in patterns:
        hits = {name for name in names if glob_matches(pattern, name)}
        if not hits:
            raise SftlabError(f"{key}: {pattern!r} matches no parameter{name_hint(pattern, names)}")
        matched |= hits
    return matched


# What a user may call a kind of module (a word in the glob) -> parts of the names families give it: `*norm*` on GPT-2
# (ln_1, ln_2, ln_f) or `attention` on Llama (self_attn) is answered with the names this model uses.
ROLES = {"attention": (("att", "q_proj", "k_proj", "v_proj", "query", "key", "value"), ("attn", "attention")), "MLP": (("mlp", "ffn", "feed"), ("mlp", "feed_forward", "ffn",
         "intermediate")), "norm": (("norm", "ln"), ("norm", "ln_")), "embedding": (("embed", "wte", "wpe"), ("embed",
         "wte", "wpe")), "head": (("head", "classifier", "score"), ("lm_head", "score", "classifier"))}
# Module names of other model families -> their kind (ROLES): `q_proj` on GPT-2, which has one fused c_attn, is another
# family's name, not a typo of GPT-2's c_proj (an output projection), so it is answered by kind, never by spelling.
FAMILY_NAMES = {**dict.fromkeys(("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query", "key", "value",
                                 "query_key_value", "wqkv", "out_proj", "self_attn"), "attention"),
                **dict.fromkeys(("gate_proj", "up_proj", "down_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3",
                                 "dense_h_to_4h", "dense_4h_to_h", "gate_up_proj"), "MLP"),
                **dict.fromkeys(("input_layernorm", "post_attention_layernorm", "ln_1", "ln_2", "ln_f", "layernorm",
                                 "layer_norm"), "norm"),
                **dict.fromkeys(("embed_tokens", "wte", "wpe", "word_embeddings"), "embedding")}


def name_parts(names: list[str]) -> list[str]:
    """The distinct dotted parts of parameter names, in order, without block indices."""
    return list(dict.fromkeys(part for name in names for part in name.split(".") if not part.isdigit()))


def block_list_name(names: list[str]) -> str | None:
    """The prefix of the first numbered part of the names (`model.layers`, `transformer.h`), if any."""
    for name in names:
        parts = name.split(".")
        for index, part in enumerate(parts[1:], 1):
            if part.isdigit():
                return ".".join(parts[:index])
    return None


def role_of(word: str) -> str | None:
    """The kind of module (a ROLES key) a lower-case word names: another family's module name, or a word like attn."""
    return FAMILY_NAMES.get(word) or next((role for role, (asked, _) in ROLES.items() if any(a in word for a in asked)),
                                          None)


def role_parts(role: str, parts: list[str]) -> list[str]:
    """The name parts this model gives the kind of module `role`."""
    named = ROLES[role][1]
    return [part for part in parts if any(n in part.lower() for n in named)
            and not (role == "attention" and "norm" in part.lower())]


def role_hint(words: list[str], parts: list[str]) -> str:
    """'; this model's norm modules are named ln_1, ...' when a word of the glob names a kind of module (ROLES), or
    '; this model has no q_proj: its attention modules are named attn, c_attn' for another family's module name."""
    for word in words:
        if role := role_of(word):
            own = role_parts(role, parts)
            if word in FAMILY_NAMES:
                return f"; this model has no {word}: " + (f"its {role} modules are named {', '.join(own)}" if own
                                                          else f"nor any {role} module")
            return f"; this model's {role} modules are named {', '.join(own)}" if own else f"; this model has no {role}"
    return "; this model has no bias parameters" if "bias" in words else ""


def close_hint(words: list[str], parts: list[str], cutoff: float) -> str:
    """"; did you mean 'q_proj'?" for a word one typo away from a name part; another family's module name (FAMILY_NAMES:
    `q_proj` is not a misspelt `c_proj`) is left to `role_hint`."""
    import difflib

    found = [c for w in words if w not in FAMILY_NAMES for c in difflib.get_close_matches(w, parts, 1, cutoff)]
    return f"; did you mean {found[0]!r}?" if found else ""


def name_hint(pattern: str, names: list[str]) -> str:
    """'; ...' for an error about a glob that matches nothing: the block list, the closest name part to a typo, the
    names this model gives the kind of module the glob seems to mean, or a looser close part; then every name part."""
    parts = name_parts(names)
    have = {part.lower() for part in parts}
    words = [w for w in (w.strip("*?[]").lower() for w in pattern.split(".")) if w and not w.isdigit() and w not in have]
    blocks = block_list_name(names)
    hint = f"; this model's blocks are named {blocks}.0, {blocks}.1, ..." if blocks and any(
        w.startswith(("layer", "block")) for w in words) else ""
    hint = hint or close_hint(words, parts, 0.8) or role_hint(words, parts) or close_hint(words, parts, 0.6)
    return f"{hint} (parameter names are made of: {', '.join(parts[:30])}{', ...' if len(parts) > 30 else ''})"


def tied_groups(model) -> list[list[str]]:
    """Groups of parameter names that share one tensor (e.g. `lm_head.weight` and `model.embed_tokens.weight`)."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def tied_partners(model) -> dict[str, list[str]]:
    """Each tied parameter name -> the other names of its tensor (`tied_groups`)."""
    return {name: [other for other in group if other != name] for group in tied_groups(model) for name in group}


def tie_notes(model, selected: set[str]) -> list[str]:
    """Say so when a selected parameter is tied to one that was not asked for (training one trains both)."""
    notes = []
    for group in tied_groups(model):
        asked = [name for name in group if name in selected]
        others = [name for name in group if name not in selected]
        if asked and others:
            notes.append(f"{asked[0]} is tied to {', '.join(others)}: training it also changes "
                         f"{'them' if len(others) > 1 else 'that one'}")
    return notes
