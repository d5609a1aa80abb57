"""The three parts of a vision-language model, found from its structure: vision tower, projector, language model.

    groups = part_groups(model)        # {"vision": [param names], "projector": [...], "language": [...]}
    names = expand_part_globs(model, ["vision:*", "projector:*"], "strategy.freeze.modules")

- vision: the module whose `config` is the model's `vision_config` (Qwen2-VL `model.visual`, LLaVA / Gemma 3
  `model.vision_tower`), without the projector when the projector sits inside it.
- projector: the module that maps vision features into the language model's embedding space: a module named
  `multi_modal_projector` (LLaVA, Gemma 3), `merger` (Qwen2-VL, Qwen2.5-VL; inside the vision module),
  `mm_projector`, `connector` or `projector`.
- language: every other parameter (the language model's embeddings, blocks and norm, and `lm_head`).

`strategy.freeze.modules` entries of the form `PART:GLOB` (`vision:*`, `projector:*`, `language:*`,
`language:*.self_attn.*`) name the parameters of that part whose full name matches GLOB (with the glob rules
of `sftlab.strategy.structure.glob_matches`); other entries are left as they are.
"""

from __future__ import annotations

from sftlab.errors import SftlabError

PARTS = ("vision", "projector", "language")
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "mm_projector", "connector", "projector")


def _vision_module_name(model) -> str | None:
    vision_config = getattr(model.config, "vision_config", None)
    if vision_config is None:
        return None
    for name, module in model.named_modules():
        if name and getattr(module, "config", None) is vision_config:
            return name
    for name, module in model.named_modules():  # a copy of the config (e.g. after a reload): match the class
        config = getattr(module, "config", None)
        if name and config is not None and type(config) is type(vision_config):
            return name
    return None


def _projector_module_name(model) -> str | None:
    candidates = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in PROJECTOR_NAMES]
    for wanted in PROJECTOR_NAMES:  # the most specific name first
        for name in candidates:
            if name.rsplit(".", 1)[-1] == wanted:
                return name
    return None


def part_modules(model) -> dict[str, str | None]:
    """Module names of the vision tower and the projector (None when the model has no such part)."""
    base = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    return {"vision": _vision_module_name(base), "projector": _projector_module_name(base)}


def _under(name: str, prefix: str | None) -> bool:
    return bool(prefix) and (name == prefix or name.startswith(prefix + ".") or f".{prefix}." in f".{name}")


def part_groups(model) -> dict[str, list[str]]:
    """Parameter names (duplicates of tied tensors included) of each part; raises if the model has no vision tower."""
    modules = part_modules(model)
    if modules["vision"] is None:
        raise SftlabError(f"{type(model).__name__} has no vision tower (its config has no vision_config); "
                          "vision:/projector:/language: names apply to vision-language models only")
    groups: dict[str, list[str]] = {part: [] for part in PARTS}
    for name, _ in model.named_parameters(remove_duplicate=False):
        if _under(name, modules["projector"]):
            groups["projector"].append(name)
        elif _under(name, modules["vision"]):
            groups["vision"].append(name)
        else:
            groups["language"].append(name)
    return groups


def expand_part_globs(model, patterns: list[str], key: str) -> list[str]:
    """Replace `PART:GLOB` entries by the matching parameter names; a part glob matching nothing is an error."""
    from sftlab.strategy.structure import glob_matches

    if not any(pattern.split(":", 1)[0] in PARTS and ":" in pattern for pattern in patterns):
        return list(patterns)
    groups = part_groups(model)
    expanded: list[str] = []
    for pattern in patterns:
        part, sep, glob = pattern.partition(":")
        if not sep or part not in PARTS:
            expanded.append(pattern)
            continue
        hits = [name for name in groups[part] if glob_matches(glob or "*", name)]
        if not hits:
            raise SftlabError(f"{key}: {pattern!r} matches no parameter of the {part} part "
                              f"({len(groups[part])} parameters, e.g. {', '.join(groups[part][:2]) or 'none'})")
        expanded.extend(hits)
    return expanded


def part_of(model, names: list[str]) -> dict[str, int]:
    """How many of `names` (parameter names) fall in each part, e.g. to describe what a strategy trains."""
    groups = part_groups(model)
    lookup = {name: part for part, members in groups.items() for name in members}
    counts = {part: 0 for part in PARTS}
    for name in names:
        counts[lookup.get(name, "language")] += 1
    return counts


def drop_vision_layer_lists(model, candidates: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """Block-list candidates outside the vision tower (a VLM's `layers` are the language model's)."""
    try:
        vision = part_modules(model)["vision"]
    except AttributeError:
        return candidates
    if vision is None:
        return candidates
    return [(name, blocks) for name, blocks in candidates if not _under(name, vision)]
