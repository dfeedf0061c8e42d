"""paramloop: tune the parameters of LLM calls while they run.

The library surface: build task configurations (:func:`task`, :func:`load_config`),
the whole loop over a store with :func:`build_loop` (every rollout starts in shadow),
then ``recommend`` and ``record_outcome``.
Importing paramloop imports no web framework and no database driver.
"""

from paramloop.core.features import (
    BoolFeature,
    CategoricalFeature,
    CountFeature,
    Feature,
    Featurizer,
    NumericFeature,
    fingerprint,
    published_features,
)
from paramloop.core.reward import RewardFunction
from paramloop.core.space import ModelRule, ParameterSpace, TrustRegion
from paramloop.engine import ArmDistribution, Optimizer, TaskConfig, load_config, task
from paramloop.engine.importers import ExternalRow, dsjson_rows, import_rows, obp_rows
from paramloop.engine.loop import Loop, build_loop
from paramloop.errors import ParamloopError
from paramloop.types import Decision, Outcome, Params, RecordedOutcome

__version__ = "0.1.0"

__all__ = [
    "ArmDistribution",
    "BoolFeature",
    "CategoricalFeature",
    "CountFeature",
    "Decision",
    "ExternalRow",
    "Feature",
    "Featurizer",
    "Loop",
    "ModelRule",
    "NumericFeature",
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
    "build_loop",
    "dsjson_rows",
    "fingerprint",
    "import_rows",
    "load_config",
    "obp_rows",
    "published_features",
    "task",
]
