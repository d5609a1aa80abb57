"""sftlab's Python API: the commands as functions, for notebooks and pipelines (docs/python-api.md).

    from sftlab import api
    result = api.train("run.yaml", ["train.max_steps=20"], overwrite=True)
    summary = api.evaluate(result.out_dir, data="test.jsonl", task="labels")

Each function is the code its command runs (`sftlab.commands.*` hand it their options), so bad input raises
`SftlabError` with the line the CLI prints after `error: `. Importing this module does not import torch.
"""

from __future__ import annotations

from sftlab.commands.eval import evaluate
from sftlab.commands.generate import generate
from sftlab.commands.plan import plan
from sftlab.commands.train import train
from sftlab.config import RunConfig, load_config
from sftlab.errors import SftlabError

_TRAINING_NAMES = ("RunResult", "TrainingDiverged", "TrainingInterrupted")  # sftlab.train imports torch: on first use

__all__ = ["RunConfig", "SftlabError", "evaluate", "generate", "load_config", "plan", "train", *_TRAINING_NAMES]


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        import sftlab.train

        return getattr(sftlab.train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
