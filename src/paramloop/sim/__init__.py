"""The built-in LLM traffic simulator: a stand-in for real calls, never seen by the optimizer."""

from paramloop.sim.world import (
    DEFAULT_MODELS,
    DEFAULT_TASKS,
    NUMERIC_FEATURES,
    PROMPT_VARIANTS,
    RISK_TIERS,
    SIGNALS,
    Bump,
    ContextSpec,
    IntFeature,
    ModelProfile,
    TaskProfile,
    World,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TASKS",
    "NUMERIC_FEATURES",
    "PROMPT_VARIANTS",
    "RISK_TIERS",
    "SIGNALS",
    "Bump",
    "ContextSpec",
    "IntFeature",
    "ModelProfile",
    "TaskProfile",
    "World",
]
