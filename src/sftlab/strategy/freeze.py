"""strategy.kind=freeze: train only chosen transformer blocks and parameter globs, freeze the rest.

`strategy.freeze.layers` picks blocks ('last:N', 'first:N', a list of indices, 'all', 'none') from the
model's own block list; `strategy.freeze.modules` adds parameters by glob (`lm_head`, `*.self_attn.*`,
`*.bias`, `*norm*`). A classifier's new head always trains. A malformed layer spec is refused when the config is
loaded (`parse_layer_spec`, the grammar the config's validator uses too); an N or index the model does not have, or
anything that matches nothing, is an error before training starts, and tied weights that would train together are
reported.
"""

from __future__ import annotations

from sftlab.errors import SftlabError
from sftlab.strategy.structure import find_layer_list, head_module_names, is_classifier, match_globs, tie_notes


LAYER_SPECS = "'last:N' or 'first:N' (N at least 1), a non-empty list of indices, 'all' or 'none'"


def parse_layer_spec(spec) -> tuple[str, int | list[int] | None]:
    """The syntax of a `strategy.freeze.layers` value, without the model: ('none' | 'all', None), ('last' | 'first',
    N) or ('list', indices); ValueError naming what was expected. Config loading and `resolve_layer_indices` share it,
    so there is one grammar; whether N or an index fits the model is only known when the model is loaded."""
    if spec in ("none", "all"):
        return spec, None
    if isinstance(spec, str):
        where, _, number = spec.partition(":")
        if where not in ("last", "first") or not number.strip().isdecimal() or int(number) < 1:
            raise ValueError(f"{spec!r}: expected {LAYER_SPECS}")
        return where, int(number)
    if isinstance(spec, (list, tuple)) and all(isinstance(index, int) and not isinstance(index, bool) for index in spec):
        if not spec:
            raise ValueError("empty list; use 'none' to train no block")
        return "list", list(spec)
    raise ValueError(f"{spec!r}: expected {LAYER_SPECS}")


def resolve_layer_indices(spec, count: int) -> list[int]:
    """Turn a `strategy.freeze.layers` value into sorted block indices in [0, count)."""
    key = "strategy.freeze.layers"
    try:
        kind, value = parse_layer_spec(spec)
    except ValueError as exc:
        raise SftlabError(f"{key}: {exc}") from None
    if kind == "none":
        return []
    if kind == "all":
        return list(range(count))
    if kind in ("last", "first"):
        if value > count:
            raise SftlabError(f"{key} {spec!r}: N must be between 1 and the model's {count} layers")
        return list(range(count - value, count)) if kind == "last" else list(range(value))
    for index in value:
        if not -count <= index < count:
            raise SftlabError(f"{key}: layer index {index} is out of range; the model has {count} layers (0-{count - 1})")
    return sorted({index % count for index in value})


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
