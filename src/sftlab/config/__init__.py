"""Run configuration: typed groups (schema.py) and YAML + override loading (load.py)."""

from sftlab.config.load import apply_override, dump_config, load_config, validate_config
from sftlab.config.schema import (
    AutoConfig,
    DataConfig,
    EvalConfig,
    FreezeConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
)

__all__ = [
    "AutoConfig", "DataConfig", "EvalConfig", "FreezeConfig", "LoraConfig", "ModelConfig", "OutputConfig",
    "RunConfig", "StrategyConfig", "TrainConfig", "apply_override", "dump_config", "load_config", "validate_config",
]
