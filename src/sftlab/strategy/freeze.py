"""strategy.kind=freeze: train only chosen transformer blocks and parameter globs, freeze the rest.

`strategy.freeze.layers` picks blocks ('last:N', 'first:N', a list of indices, 'all', 'none') from the
model's own block list; `strategy.freeze.modules` adds parameters by glob (`lm_head`, `*.self_attn.*`,
`*.bias`, `*norm*`). A classifier's new head always trains. Anything that matches nothing is an error
before training starts, and tied weights that would train together are reported.
"""

from __future__ import annotations

from sftlab.errors import SftlabError
from sftlab.strategy.structure import find_layer_list, head_module_names, is_classifier, match_globs, tie_notes


def resolve_layer_indices(spec, count: int) -> list[int]:
    """Turn a `strategy.freeze.layers` value into sorted block indices in [0, count)."""
    key = "strategy.freeze.layers"
    if spec == "none":
        return []
    if spec == "all":
        return list(range(count))
    if isinstance(spec, str):
        where, _, number = spec.partition(":")
        if where not in ("last", "first") or not number.strip().isdigit():
            raise SftlabError(f"{key} {spec!r}: expected 'last:N', 'first:N', a list of indices, 'all' or 'none'")
        n = int(number)
        if not 1 <= n <= count:
            raise SftlabError(f"{key} {spec!r}: N must be between 1 and the model's {count} layers")
        return list(range(count - n, count)) if where == "last" else list(range(n))
    indices = []
    for index in spec:
        if not -count <= index < count:
            raise SftlabError(f"{key}: layer index {index} is out of range; the model has {count} layers (0-{count - 1})")
        indices.append(index % count)
    if not indices:
        raise SftlabError(f"{key}: empty list; use 'none' to train no block")
    return sorted(set(indices))


def apply_freeze(model, freeze_cfg) -> tuple[dict, list[str]]:
    """Freeze everything, then unfreeze the chosen blocks, globbed parameters and a classifier head."""
    by_name = dict(model.named_parameters(remove_duplicate=False))
    names = list(by_name)
    selected: set[str] = set()
    details: dict = {"layers": [], "modules": list(freeze_cfg.modules), "head": []}
    notes: list[str] = []
    if freeze_cfg.layers != "none":
        prefix, blocks = find_layer_list(model)
        indices = resolve_layer_indices(freeze_cfg.layers, len(blocks))
        starts = tuple(f"{prefix}.{i}." for i in indices)
        selected |= {name for name in names if name.startswith(starts)}
        details.update(layers=indices, layer_list=prefix, num_layers=len(blocks))
    if freeze_cfg.modules:
        from sftlab.vision.parts import expand_part_globs  # vision:*, projector:*, language:* on VLMs

        patterns = expand_part_globs(model, list(freeze_cfg.modules), "strategy.freeze.modules")
        selected |= match_globs(patterns, names, "strategy.freeze.modules")
    if is_classifier(model):
        heads = head_module_names(model)
        selected |= {name for name in names if name.split(".", 1)[0] in heads}
        details["head"] = heads
        notes.append(f"classification head ({', '.join(heads)}) always trainable under freeze")
    if not selected:
        raise SftlabError(f"strategy.freeze selects nothing to train (layers: {freeze_cfg.layers}, no modules); set "
                          "strategy.freeze.layers (e.g. last:2) or strategy.freeze.modules")
    for param in model.parameters():
        param.requires_grad_(False)
    for name in selected:
        by_name[name].requires_grad_(True)
    notes.extend(tie_notes(model, selected))
    return details, notes
