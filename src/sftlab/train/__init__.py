"""Training: the single loop for pt, sft and cls (`run_training`), its loss, optimizer and checkpoints."""

from sftlab.train.loop import RunResult, TrainingDiverged, TrainingInterrupted, run_training

__all__ = ["RunResult", "TrainingDiverged", "TrainingInterrupted", "run_training"]
