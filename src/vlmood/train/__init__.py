"""The training engine (shared by pretraining and adaptation methods) and pretraining."""

from vlmood.train.engine import ResumeError, TrainConfig, Trainer, TrainingDivergedError

__all__ = ["ResumeError", "TrainConfig", "Trainer", "TrainingDivergedError"]
