"""The single entry point that decides which parameters train: full, freeze, lora or auto.

    model, trainable = select_trainable(model, cfg.strategy, calibration_batches, loss_fn)
    log(trainable.summary())      # "trainable 1,234 / 56,789 (2.17%)"

The training loop never branches on the strategy: it optimises the parameters that have
`requires_grad=True` on the returned model (which is a peft wrapper for lora).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sftlab.errors import SftlabError


@dataclass
class TrainableSet:
    """What will train: parameter names, their element count, the model total (a `modules_to_save` module once, not
    with peft's trained copy: `saved_copies`), the strategy kind (a 4-bit weight counts the values it stands for:
    `parameter_values`).

    `details` carries strategy-specific facts (freeze: layers and heads; lora: the peft settings;
    auto: the importance report) and `notes` the lines worth showing the user (e.g. tied weights).
    """

    names: list[str]
    trainable: int
    total: int
    kind: str
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    copies: int = 0  # values in peft's trained copies of modules_to_save modules: held in memory beside the total

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def summary(self) -> str:
        """One log line: 'trainable 1,234 / 56,789 (2.17%)', then the strategy and any notes."""
        line = f"trainable {self.trainable:,} / {self.total:,} ({100 * self.fraction:.2f}%) [{self.kind}]"
        return "; ".join([line, *self.notes])


def parameter_values(param) -> int:
    """A parameter's element count; for a 4-bit (QLoRA) weight the values it stands for, not its packed bytes."""
    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(shape.numel()) if shape is not None else param.numel()


def saved_copies(model) -> set[int]:
    """ids of the trained copies peft makes of `modules_to_save` modules (a classifier's head, an lm_head): the copy
    stands in for its module, so the model's total counts one of the two, as without modules_to_save."""
    copies: set[int] = set()
    for module in model.modules():
        if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):  # peft's ModulesToSaveWrapper
            copies |= {id(param) for param in module.modules_to_save.parameters()}
    return copies


def trainable_set(model, kind: str, details: dict | None = None, notes: list[str] | None = None) -> TrainableSet:
    """Count what `requires_grad` says on `model` now; fail if nothing would train. The total is the model's own
    parameters (with a LoRA adapter's), each `modules_to_save` module once though peft holds it twice."""
    params = list(model.named_parameters())  # tied parameters appear once, under their first name
    names = [name for name, param in params if param.requires_grad]
    trainable = sum(parameter_values(param) for _, param in params if param.requires_grad)
    copies = saved_copies(model)
    total = sum(parameter_values(param) for _, param in params if id(param) not in copies)
    if not names:
        raise SftlabError(f"strategy.kind={kind}: the settings leave no parameter trainable")
    held = sum(parameter_values(param) for _, param in params if id(param) in copies)
    return TrainableSet(names=names, trainable=trainable, total=total, kind=kind,
                        details=details or {}, notes=notes or [], copies=held)


def select_trainable(model, strategy_cfg, calibration_batches: Iterable[dict] | None = None,
                     loss_fn: Callable | None = None):
    """Set `requires_grad` per the strategy and return `(model, TrainableSet)`.

    `strategy_cfg` is a `StrategyConfig` (or the equivalent dict). `auto` needs
    `calibration_batches` (batch dicts) and `loss_fn(model, batch) -> loss tensor`; the other kinds
    ignore them. For lora the returned model is a peft `PeftModel`.
    """
    from pydantic import ValidationError

    from sftlab.config.load import describe_error
    from sftlab.config.schema import StrategyConfig

    if not isinstance(strategy_cfg, StrategyConfig):
        try:
            strategy_cfg = StrategyConfig.model_validate(strategy_cfg)
        except ValidationError as exc:
            raise SftlabError(f"strategy.{describe_error(exc.errors()[0])}") from None
    kind = strategy_cfg.kind
    if kind == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model, trainable_set(model, "full")
    if kind == "freeze":
        from sftlab.strategy.freeze import apply_freeze

        details, notes = apply_freeze(model, strategy_cfg.freeze)
        return model, trainable_set(model, "freeze", details, notes)
    if kind == "lora":
        from sftlab.strategy.lora import apply_lora

        peft_model, details, notes = apply_lora(model, strategy_cfg.lora)
        return peft_model, trainable_set(peft_model, "lora", details, notes)
    if kind == "auto":
        from sftlab.strategy.importance import apply_auto

        details, notes = apply_auto(model, strategy_cfg.auto, calibration_batches, loss_fn)
        return model, trainable_set(model, "auto", details, notes)
    raise SftlabError(f"strategy.kind {kind!r}: expected full, freeze, lora or auto")
