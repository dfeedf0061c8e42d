"""A typed client of the paramloop service, and an ``openai`` wrapper built on it.

* :class:`ParamloopClient` / :class:`AsyncParamloopClient`: the decision API
  (``recommend``, ``record_outcome``, ``feedback``) and the operations endpoints
  (status, rollout and SLO status, alerts, rollback, traffic, approvals, health).
* :class:`OptimizedOpenAI` / :class:`AsyncOptimizedOpenAI`: an ``openai`` client
  whose chat completions get paramloop's parameters and report their outcomes,
  for callers who do not want the proxy.

It needs httpx (``pip install 'paramloop[client]'``); the wrapper needs the
caller's ``openai``.  ``import paramloop`` does not import this package, so the
library stays free of HTTP clients.  Errors: :class:`ParamloopAPIError` (the
service's error body), :class:`ParamloopConnectionError` (no answer) and
:class:`~paramloop.errors.ConfigError` (a bad argument).
"""

from paramloop.client.api import AsyncParamloopClient, ParamloopClient
from paramloop.client.models import (
    Alert,
    Approval,
    Health,
    OutcomeReceipt,
    ParamloopAPIError,
    ParamloopConnectionError,
    Recommendation,
    RolloutChange,
    RolloutStatus,
    ServiceStatus,
    SLOStatus,
    TaskStatus,
)
from paramloop.client.wrapper import AsyncOptimizedOpenAI, OptimizedOpenAI

__all__ = [
    "Alert",
    "Approval",
    "AsyncOptimizedOpenAI",
    "AsyncParamloopClient",
    "Health",
    "OptimizedOpenAI",
    "OutcomeReceipt",
    "ParamloopAPIError",
    "ParamloopClient",
    "ParamloopConnectionError",
    "Recommendation",
    "RolloutChange",
    "RolloutStatus",
    "SLOStatus",
    "ServiceStatus",
    "TaskStatus",
]
