"""Which parameters train: `select_trainable(model, strategy_cfg, ...) -> (model, TrainableSet)`."""

from sftlab.strategy.select import TrainableSet, select_trainable

__all__ = ["TrainableSet", "select_trainable"]
