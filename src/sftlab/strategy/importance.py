"""strategy.kind=auto: unfreeze the units whose parameters matter most for the calibration loss.

1. Run `strategy.auto.batches` calibration batches through `loss_fn(model, batch)` and backpropagate
   (dropout off), accumulating per parameter either the squared gradient (`score: fisher`, the
   diagonal empirical Fisher) or |gradient x weight| (`score: grad_weight`, a first-order estimate of
   the loss change if the weight were removed).
2. Group parameters into units (`granularity`): `linear` = each parameter-owning leaf module;
   `block` = each child of a transformer block (attention, MLP, norms) plus embeddings and heads;
   `layer` = each whole transformer block plus embeddings and heads.
3. Score a unit by its accumulated value per batch and per parameter, so large and small units compare.
4. Walk units from the highest score down, taking each one that still fits in the budget (a fraction of
   all parameters, or an absolute count when > 1), then make exactly those trainable. A classifier's head (new
   weights) is taken first whatever its score, as under freeze, and counts against the budget; when it alone is
   larger than the budget nothing else trains (the trainable line says so).

`details` records every unit's score, size and chosen flag, the budget and the seconds taken.

Scoring a large model takes minutes on a CPU (Gemma 3 270M: about 11 s a batch on 2 cores); within
`scoring_progress(report)` each scored batch is reported as one line (`sftlab plan` prints them to stderr).
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterable

from sftlab.errors import SftlabError
from sftlab.strategy.structure import find_layer_list, head_module_names, is_classifier, tie_notes

_REPORT: ContextVar[Callable[[str], None] | None] = ContextVar("sftlab_auto_scoring_progress", default=None)


@contextmanager
def scoring_progress(report: Callable[[str], None] | None):
    """Within the block, auto's scoring calls `report(line)` after each calibration batch (None: silent)."""
    token = _REPORT.set(report)
    try:
        yield
    finally:
        _REPORT.reset(token)


def scoring_reporter() -> Callable[[str], None] | None:
    """The `report` of the innermost `scoring_progress` block (None outside one)."""
    return _REPORT.get()


def _planned_batches(batches, limit: int) -> str:
    """'8' when the calibration batches are a sized collection (the batches scoring will use), else 'up to 8'."""
    return str(min(len(batches), limit)) if hasattr(batches, "__len__") else f"up to {limit}"


def budget_in_params(budget: float, total: int) -> int:
    """`strategy.auto.budget` as a parameter count: a fraction of `total` when <= 1, else a count."""
    if budget <= 0:
        raise SftlabError(f"strategy.auto.budget {budget}: must be above 0")
    if budget > 1 and budget != int(budget):
        raise SftlabError(f"strategy.auto.budget {budget}: above 1 it must be a whole parameter count")
    count = int(round(budget * total)) if budget <= 1 else int(budget)
    if count > total:
        raise SftlabError(f"strategy.auto.budget {int(budget):,} is more than the model's {total:,} parameters")
    if count < 1:
        raise SftlabError(f"strategy.auto.budget {budget}: rounds to 0 of {total:,} parameters")
    return count


def unit_of(name: str, granularity: str, layer_prefix: str | None, base_prefix: str) -> str:
    """The unit a parameter belongs to at the given granularity."""
    if granularity == "linear":
        return name.rsplit(".", 1)[0]
    if layer_prefix and name.startswith(layer_prefix + "."):
        parts = name[len(layer_prefix) + 1:].split(".")
        keep = 1 if granularity == "layer" else 2
        return ".".join([layer_prefix, *parts[:keep]])
    parts = name.split(".")
    return ".".join(parts[:2]) if base_prefix and parts[0] == base_prefix and len(parts) > 2 else parts[0]


def group_units(model, granularity: str) -> dict[str, list[str]]:
    """Unit name -> parameter names (tied parameters once, under their first name)."""
    layer_prefix = None if granularity == "linear" else find_layer_list(model)[0]
    base_prefix = getattr(model, "base_model_prefix", "")
    units: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        units.setdefault(unit_of(name, granularity, layer_prefix, base_prefix), []).append(name)
    return units


def accumulate_scores(model, batches: Iterable[dict], loss_fn: Callable, score: str, limit: int) -> tuple[dict, int]:
    """Per-parameter sums of grad^2 (fisher) or |grad*weight| over up to `limit` batches; (sums, batches used)."""
    import torch

    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    sums = {name: 0.0 for name in params}
    used = 0
    report, planned, started = _REPORT.get(), _planned_batches(batches, limit), time.perf_counter()
    try:
        model.eval()
        for param in params.values():
            param.requires_grad_(True)
        device = next(iter(params.values())).device
        for batch in itertools.islice(batches, limit):
            batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            with torch.no_grad():
                for name, param in params.items():
                    if param.grad is not None:
                        grad = param.grad.float()
                        value = grad.pow(2) if score == "fisher" else (grad * param.detach().float()).abs()
                        sums[name] += float(value.sum())
            used += 1
            if report:
                report(f"auto: scored calibration batch {used}/{planned} ({time.perf_counter() - started:.1f} s)")
        if report and 0 < used < limit:
            report(f"auto: the training data gave {used} calibration batch{'es' if used != 1 else ''}, fewer than "
                   f"strategy.auto.batches={limit}; the scores rest on those")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for name, param in params.items():
            param.requires_grad_(flags[name])
    return sums, used


def choose_units(scored: list[dict], budget: int, always: set[str] = frozenset()) -> int:
    """Mark units `chosen`: those in `always` (a classifier's head), then the best scores first, skipping those that
    no longer fit; return the count taken."""
    taken = 0
    for unit in sorted(scored, key=lambda u: (u["name"] not in always, -u["score"], u["name"])):
        if unit["name"] in always or taken + unit["size"] <= budget:
            unit["chosen"] = True
            taken += unit["size"]
    return taken


def head_units(model, units: dict[str, list[str]]) -> set[str]:
    """The units of a classifier's head (new weights that always train, as under freeze); none for other models."""
    if not is_classifier(model):
        return set()
    heads = head_module_names(model)
    return {unit for unit, names in units.items() if names[0].split(".", 1)[0] in heads}


def head_note(scored: list[dict], heads: set[str], budget: int) -> list[str]:
    """The trainable line's word on a classifier's head: it trains whatever its score, inside the budget or not."""
    if not heads:
        return []
    size = sum(u["size"] for u in scored if u["name"] in heads)
    where = f"{size:,} of the budget's {budget:,} parameters" if size <= budget else \
        f"{size:,} parameters, more than the budget's {budget:,}: nothing else trains"
    return [f"auto: classification head ({', '.join(sorted(heads))}) always trainable ({where})"]


def check_budget_fits_a_unit(budget: int, smallest: int, granularity: str) -> None:
    """A budget below the smallest unit would choose nothing: say so, with advice that applies."""
    if budget < smallest:
        other = "" if granularity == "linear" else " or use granularity=linear"
        raise SftlabError(f"strategy.auto.budget: {budget:,} parameters is less than the smallest "
                          f"{granularity} unit ({smallest:,}); raise the budget{other}")


def apply_auto(model, auto_cfg, calibration_batches, loss_fn) -> tuple[dict, list[str]]:
    """Score units on calibration batches and make the best ones (within budget) the only trainable ones."""
    if calibration_batches is None or loss_fn is None:
        raise SftlabError("strategy.kind=auto needs calibration batches and a loss function (from the training data)")
    started = time.perf_counter()
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    budget = budget_in_params(auto_cfg.budget, total)
    units = group_units(model, auto_cfg.granularity)
    sizes = {unit: sum(params[name].numel() for name in names) for unit, names in units.items()}
    heads = head_units(model, units)
    if not heads:  # a classifier's head always trains, so its budget never chooses nothing
        check_budget_fits_a_unit(budget, min(sizes.values()), auto_cfg.granularity)  # before the (slow) scoring
    sums, used = accumulate_scores(model, calibration_batches, loss_fn, auto_cfg.score, auto_cfg.batches)
    if used == 0:
        raise SftlabError("strategy.kind=auto: the calibration data gave no batch")
    scored = [{"name": unit, "score": sum(sums[name] for name in names) / (used * sizes[unit]),
               "size": sizes[unit], "chosen": False} for unit, names in units.items()]
    taken = choose_units(scored, budget, heads)
    chosen = {unit["name"] for unit in scored if unit["chosen"]}
    for unit, names in units.items():
        for name in names:
            params[name].requires_grad_(unit in chosen)
    scored.sort(key=lambda u: -u["score"])
    details = {"score": auto_cfg.score, "granularity": auto_cfg.granularity, "batches": used,
               "budget": auto_cfg.budget, "budget_params": budget, "chosen_params": taken,
               "chosen": [u["name"] for u in scored if u["chosen"]], "head": sorted(heads), "units": scored,
               "seconds": round(time.perf_counter() - started, 3)}
    top = ", ".join(details["chosen"][:3]) + (", ..." if len(chosen) > 3 else "")
    notes = [f"auto: {len(chosen)} of {len(scored)} {auto_cfg.granularity} units by {auto_cfg.score} ({top})"]
    notes += head_note(scored, heads, budget)
    notes += tie_notes(model, {name for unit in chosen for name in units[unit]})
    notes += under_budget_note(scored, taken, budget, auto_cfg.granularity)
    return details, notes


def under_budget_note(scored: list[dict], taken: int, budget: int, granularity: str) -> list[str]:
    """When the chosen units fill less than half the budget (the better units were each too large for what was
    left: at granularity layer, a budget below one layer takes only norms), say so: the run trains far fewer
    parameters than asked."""
    if taken * 2 >= budget:
        return []
    skipped = next(u for u in sorted(scored, key=lambda u: (-u["score"], u["name"])) if not u["chosen"])
    finer = "; granularity=linear fills it more closely" if granularity != "linear" else ""
    return [f"auto: chose {taken:,} of the budget's {budget:,} parameters: better {granularity} units such as "
            f"{skipped['name']} ({skipped['size']:,}) do not fit in it{finer}"]
