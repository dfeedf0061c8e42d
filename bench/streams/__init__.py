"""Public bandit streams and reference learners for ``bench/bench_streams.py``.

``data`` builds the streams, ``learners`` holds the protocol and the
numpy / Vowpal Wabbit learners, ``paramloop_learner`` adapts paramloop's policy.
"""

from streams.data import RIVER_STREAMS, STREAMS, LoggedStream, Stream
from streams.learners import (
    GreedyRidge,
    Learner,
    PerArmLinUCB,
    VowpalWabbit,
    VWEpsilonGreedy,
    VWSquareCB,
)
from streams.paramloop_learner import ParamloopLearner

__all__ = [
    "RIVER_STREAMS",
    "STREAMS",
    "GreedyRidge",
    "Learner",
    "LoggedStream",
    "ParamloopLearner",
    "PerArmLinUCB",
    "Stream",
    "VWEpsilonGreedy",
    "VWSquareCB",
    "VowpalWabbit",
]
