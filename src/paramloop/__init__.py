"""paramloop: tune the parameters of LLM calls while they run.

The library surface: build task configurations (:func:`task`, :func:`load_config`),
an :class:`Optimizer` over a store, then ``recommend`` and ``record_outcome``.
Importing paramloop imports no web framework and no database driver.
"""

from paramloop.core.features import Featurizer, fingerprint, published_features
from paramloop.core.reward import RewardFunction
from paramloop.core.space import ModelRule, ParameterSpace, TrustRegion
from paramloop.engine import Optimizer, TaskConfig, load_config, task
from paramloop.errors import ParamloopError
from paramloop.types import Decision, Outcome, Params, RecordedOutcome

__version__ = "0.1.0"

__all__ = [
    "Decision",
    "Featurizer",
    "ModelRule",
    "Optimizer",
    "Outcome",
    "ParameterSpace",
    "ParamloopError",
    "Params",
    "RecordedOutcome",
    "RewardFunction",
    "TaskConfig",
    "TrustRegion",
    "__version__",
    "fingerprint",
    "load_config",
    "published_features",
    "task",
]
