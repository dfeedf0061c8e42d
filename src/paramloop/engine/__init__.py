"""The engine wires the pure core to storage and clocks."""

from paramloop.engine.config import TaskConfig, load_config, parse_config, task
from paramloop.engine.optimizer import ArmDistribution, LoopStats, Optimizer

__all__ = [
    "ArmDistribution",
    "LoopStats",
    "Optimizer",
    "TaskConfig",
    "load_config",
    "parse_config",
    "task",
]
