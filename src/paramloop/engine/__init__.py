"""The engine wires the pure core to storage and clocks."""

from paramloop.engine.config import TaskConfig, load_config, parse_config, task
from paramloop.engine.optimizer import LoopStats, Optimizer

__all__ = ["LoopStats", "Optimizer", "TaskConfig", "load_config", "parse_config", "task"]
