"""The embedded default configuration: one task type per simulated workload.

Each baseline is what a team would plausibly ship before tuning (a capable
model, a middling temperature, a generous token budget); the default trust
region (|Δtemperature| ≤ 0.2, |Δmax_tokens| ≤ 200) bounds how far the
optimizer may move from it.  Model switching is allowed, so "the cheap model is
good enough" can be discovered where it is true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from paramloop.core.space import ModelRule
from paramloop.engine import TaskConfig, task
from paramloop.engine.config import DEFAULT_POLICY
from paramloop.types import Params

MODELS = ("gpt-small", "gpt-large", "reasoner")

#: The reasoning model takes no sampling parameters and counts its budget as max_completion_tokens.
MODEL_RULES = (
    ModelRule(
        "reasoner",
        rejects=frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"}),
        max_tokens_field="max_completion_tokens",
    ),
)

TEMPERATURES = tuple(round(0.1 * i, 1) for i in range(16))

#: task type -> (baseline, max_tokens grid, prompt variants or None)
DEFAULTS: Mapping[str, tuple[Params, tuple[int, ...], tuple[str | None, ...] | None]] = {
    "code_review": (
        Params("gpt-large", temperature=0.5, max_tokens=1024, top_p=0.9),
        (512, 768, 896, 1024, 1152, 1280, 2048),
        (None, "concise", "detailed"),
    ),
    "code_generation": (
        Params("gpt-large", temperature=0.4, max_tokens=1536, top_p=0.9),
        (768, 1024, 1408, 1536, 1664, 2048, 4096),
        None,
    ),
    "creative_writing": (
        Params("gpt-large", temperature=0.7, max_tokens=768, top_p=0.95),
        (384, 512, 640, 768, 896, 1024, 1536),
        None,
    ),
    "summarization": (
        Params("gpt-large", temperature=0.5, max_tokens=512, top_p=0.9),
        (128, 192, 256, 320, 384, 448, 512, 640, 768),
        None,
    ),
    "classification": (
        Params("gpt-small", temperature=0.3, max_tokens=64, top_p=0.9),
        (8, 16, 24, 32, 48, 64, 96, 128),
        None,
    ),
    "extraction": (
        Params("gpt-large", temperature=0.3, max_tokens=384, top_p=0.9),
        (128, 192, 256, 320, 384, 448, 512),
        None,
    ),
    "qa": (
        Params("gpt-large", temperature=0.8, max_tokens=512, top_p=0.9),
        (256, 384, 448, 512, 576, 640, 1024),
        (None, "concise", "detailed"),
    ),
}


def default_tasks(
    *,
    policy: str = DEFAULT_POLICY,
    exploration: float | None = None,
    task_types: Sequence[str] | None = None,
    policy_params: Mapping[str, Any] | None = None,
) -> list[TaskConfig]:
    """The embedded configuration used by ``paramloop simulate`` and the benchmarks."""
    names = list(task_types) if task_types is not None else list(DEFAULTS)
    configs = []
    for name in names:
        baseline, max_tokens, variants = DEFAULTS[name]
        grids: dict[str, Sequence[float | int | str | None]] = {
            "model": MODELS,
            "temperature": TEMPERATURES,
            "max_tokens": max_tokens,
        }
        if variants is not None:
            grids["prompt_variant"] = variants
        configs.append(
            task(
                name,
                preset="published",
                baseline=baseline,
                grids=grids,
                model_rules=MODEL_RULES,
                policy=policy,
                policy_params=dict(policy_params or {}),
                exploration=exploration,
            )
        )
    return configs
