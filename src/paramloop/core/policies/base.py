"""The policy seam: one protocol, the shared rules, and ``decide``.

A policy gives a probability to every feasible arm in a context
(:meth:`Policy.probabilities`); :func:`decide` mixes in the exploration floor,
samples one arm and returns its **exact** propensity: the probability with
which that arm was drawn by this very procedure.  Thompson-style policies
estimate "probability of being best" by seeded Monte Carlo with a stated
number of draws; the decision samples from that estimate, so the logged
propensity is exact for the distribution actually used.

Public methods apply the shared rules (shapes, ranges, the revision counter)
and call a one-line hook (``_distribution``, ``_update``, …) that each
algorithm implements in its own module.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from paramloop.errors import ConfigError, OutcomeError, SnapshotError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_MAGIC = b"PLSNAP1\n"


@dataclass(frozen=True, slots=True)
class ArmDesign:
    """What a policy knows of the arms and contexts of one task type.

    ``features`` is the (arms × arm-features) matrix from the parameter space;
    its first ``n_interacting`` columns are crossed with the context vector (of
    length ``context_dim``) by the linear policies.  ``baseline`` is the
    baseline arm's index.  ``scaled`` lists the context columns holding numbers in
    their natural scale (the linear policies standardize them); ``featurizer`` is
    the digest of the featurizer that builds the context vectors.
    """

    features: FloatArray
    n_interacting: int
    context_dim: int
    baseline: int
    scaled: tuple[int, ...] = ()
    featurizer: str = ""

    @property
    def n_arms(self) -> int:
        return int(self.features.shape[0])

    @property
    def digest(self) -> str:
        """A short hash identifying the design; snapshots refuse a different one."""
        h = hashlib.blake2b(digest_size=8)
        h.update(np.ascontiguousarray(self.features).tobytes())
        h.update(f"{self.n_interacting}:{self.context_dim}:{self.baseline}".encode())
        h.update(f"{self.scaled}:{self.featurizer}".encode())
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Choice:
    """The result of :func:`decide`: the arm, its exact propensity and the policy's confidence."""

    arm: int
    propensity: float
    confidence: float
    # The distribution drawn from (unnormalized, over ``arms``), kept by reference so that
    # probability_of costs nothing unless asked: a rollout's control group asks.
    weights: FloatArray | None = field(default=None, repr=False, compare=False)
    arms: IntArray | None = field(default=None, repr=False, compare=False)

    def probability_of(self, arm: int) -> float:
        """The probability the distribution this choice was drawn from gives ``arm`` (0 if infeasible)."""
        if self.weights is None or self.arms is None:
            raise ValueError("this choice does not carry its distribution")
        hit = np.flatnonzero(self.arms == arm)
        return float(self.weights[hit[0]] / self.weights.sum()) if hit.size else 0.0


class Policy(ABC):
    """A learner that gives a probability to every feasible arm in a context.

    ``name`` and ``version`` identify the algorithm (``linucb@2.0.0``);
    ``revision`` counts the updates applied, so that a decision can be replayed
    against the exact state that made it.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    #: Whether ``probabilities`` needs random draws (Monte Carlo); others get no generator.
    stochastic: ClassVar[bool] = False
    #: The uniform exploration floor a task type gets unless it sets one: policies whose
    #: distribution keeps every arm supported by itself need none.
    default_exploration: ClassVar[float] = 0.05

    def __init__(self, design: ArmDesign) -> None:
        if design.n_arms < 1:
            raise ConfigError("policy.design", "needs at least one arm")
        if not 0 <= design.baseline < design.n_arms:
            raise ConfigError(
                "policy.design.baseline",
                f"must index an arm in [0, {design.n_arms}), got {design.baseline}",
            )
        self.design = design
        self.revision = 0

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def keeps_support(self) -> bool:
        """Whether the policy's own distribution gives every feasible arm a positive probability."""
        return False

    # -- shared rules -------------------------------------------------------------------

    def probabilities(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None = None
    ) -> FloatArray:
        """Probability of choosing each of ``arms`` (feasible arm indices) in context ``x``; sums to 1."""
        if len(arms) == 0:
            raise ValueError("no feasible arm to choose from")
        return self.distribution(x, arms, rng)[0]

    def distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None = None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Probabilities, posterior means and posterior standard deviations of ``arms``, in one pass."""
        if len(arms) == 0:
            raise ValueError("no feasible arm to choose from")
        if self.stochastic and rng is None:
            raise ValueError(f"{self.label} draws Monte Carlo samples: pass an rng")
        return self._distribution(x, arms, rng)

    def probabilities_many(
        self,
        X: FloatArray,
        arms: IntArray,
        rngs: Callable[[int], np.random.Generator] | None = None,
    ) -> FloatArray:
        """(n, len(arms)): :meth:`probabilities` of every row of ``X`` (n, context dim).

        Monte Carlo policies draw row ``i`` with ``rngs(i)``.  Policies whose
        probabilities have a closed form over a batch override the :meth:`_probabilities_many`
        hook; the others are scored row by row.
        """
        if len(arms) == 0:
            raise ValueError("no feasible arm to choose from")
        if self.stochastic and rngs is None:
            raise ValueError(f"{self.label} draws Monte Carlo samples: pass rngs")
        return self._probabilities_many(X, arms, rngs)

    def _probabilities_many(
        self, X: FloatArray, arms: IntArray, rngs: Callable[[int], np.random.Generator] | None
    ) -> FloatArray:
        out = np.empty((X.shape[0], len(arms)))
        for i, x in enumerate(X):
            out[i] = self._distribution(x, arms, None if rngs is None else rngs(i))[0]
        return out

    def estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        """Posterior mean reward and its standard deviation for each of ``arms``."""
        return self._estimate(x, arms)

    def greedy(self, x: FloatArray, arms: IntArray) -> int:
        """The arm exploitation alone would choose (highest posterior mean)."""
        mean, _ = self._estimate(x, arms)
        return int(arms[int(np.argmax(mean))])

    def update(self, x: FloatArray, arm: int, reward: float) -> None:
        """Learn from one reward in [0, 1] for ``arm`` in context ``x``."""
        if not 0 <= arm < self.design.n_arms:
            raise ValueError(f"arm must be in [0, {self.design.n_arms}), got {arm}")
        if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise OutcomeError("reward", f"policies learn from rewards in [0, 1], got {reward!r}")
        self._update(x, arm, reward)
        self.revision += 1

    def snapshot(self) -> bytes:
        """Serialize the full state: header (name, version, revision, hyperparameters) and arrays."""
        header = {
            "name": self.name,
            "version": self.version,
            "revision": self.revision,
            "design": self.design.digest,
            "hyperparameters": self.hyperparameters(),
        }
        buffer = io.BytesIO()
        save: Any = np.savez  # numpy's stub cannot type **arrays next to allow_pickle
        save(buffer, **self._state())
        head = json.dumps(header, sort_keys=True).encode()
        return _MAGIC + len(head).to_bytes(4, "little") + head + buffer.getvalue()

    # -- hooks --------------------------------------------------------------------------

    @abstractmethod
    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]: ...

    @abstractmethod
    def _estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]: ...

    @abstractmethod
    def _update(self, x: FloatArray, arm: int, reward: float) -> None: ...

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]: ...

    @abstractmethod
    def _state(self) -> dict[str, FloatArray]: ...

    @abstractmethod
    def _load_state(self, state: Mapping[str, FloatArray]) -> None: ...


P = TypeVar("P", bound=type[Policy])

#: Registered policies by name; a new algorithm registers itself with :func:`register`.
POLICIES: dict[str, type[Policy]] = {}


def register(cls: P) -> P:
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, design: ArmDesign, **hyperparameters: Any) -> Policy:
    """Build a registered policy by name (``BANDIT_POLICY`` values), validating its hyperparameters."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ConfigError(
            "policy", f"unknown policy {name!r}; available: {', '.join(sorted(POLICIES))}"
        ) from None
    factory: Callable[..., Policy] = cls
    try:
        return factory(design, **hyperparameters)
    except TypeError as exc:
        raise ConfigError(
            f"policy.{name}", f"invalid hyperparameters {sorted(hyperparameters)}: {exc}"
        ) from None


def restore_policy(data: bytes, design: ArmDesign) -> Policy:
    """Rebuild a policy from :meth:`Policy.snapshot` bytes for the same arm design."""
    if not data.startswith(_MAGIC):
        raise SnapshotError("not a paramloop policy snapshot (bad magic bytes)")
    size = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
    start = len(_MAGIC) + 4
    try:
        header = json.loads(data[start : start + size])
        arrays = np.load(io.BytesIO(data[start + size :]), allow_pickle=False)
        state = {key: arrays[key] for key in arrays.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"corrupt snapshot: {exc}") from None
    name = header.get("name")
    if name not in POLICIES:
        raise SnapshotError(f"snapshot of unknown policy {name!r}")
    cls = POLICIES[name]
    if header.get("version") != cls.version:
        raise SnapshotError(
            f"snapshot is {name}@{header.get('version')}, this build has {cls.name}@{cls.version}"
        )
    if header.get("design") != design.digest:
        raise SnapshotError(
            f"snapshot of {name} was taken for a different parameter space or featurizer"
        )
    policy = make_policy(name, design, **header["hyperparameters"])
    policy._load_state(state)
    policy.revision = int(header["revision"])
    return policy


# -- deciding -----------------------------------------------------------------------------


def derive_seed(key: str | int, fingerprint: int, revision: int) -> int:
    """The per-decision seed from (seed or request id, context fingerprint, policy revision).

    >>> derive_seed("req-1", 42, 7) == derive_seed("req-1", 42, 7)
    True
    """
    h = hashlib.blake2b(f"{key!r}|{fingerprint}|{revision}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def decide(policy: Policy, x: FloatArray, arms: IntArray, seed: int, exploration: float) -> Choice:
    """Choose an arm for context ``x`` among ``arms`` and return its exact propensity.

    The policy's distribution is mixed with the uniform one: every feasible arm
    gets at least ``exploration / len(arms)``.  The draw uses a uniform number
    derived from ``seed`` (so the same seed, context and revision give the same
    arm); Monte Carlo policies get a generator seeded from it as well.
    """
    if not 0.0 <= exploration <= 1.0:
        raise ConfigError("exploration", f"must be in [0, 1], got {exploration!r}")
    rng = np.random.Generator(np.random.SFC64(seed)) if policy.stochastic else None
    probs, mean, std = policy.distribution(x, arms, rng)
    k = len(arms)
    if exploration > 0.0:
        probs = probs * (1.0 - exploration)
        probs += exploration / k
    cumulative = np.cumsum(probs)
    u = (_mix64(seed) >> 11) * (1.0 / 9007199254740992.0)  # top 53 bits → [0, 1)
    index = min(int(np.searchsorted(cumulative, u * cumulative[-1], side="right")), k - 1)
    return Choice(
        arm=int(arms[index]),
        propensity=float(probs[index] / cumulative[-1]),
        confidence=confidence(mean, std, index),
        weights=probs,
        arms=arms,
    )


_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """SplitMix64's finalizer: any seed, even 0, 1, 2, … becomes a uniform 64-bit word."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def confidence(mean: FloatArray, std: FloatArray, index: int) -> float:
    """Posterior probability that arm ``index`` beats the strongest alternative.

    With Gaussian posteriors N(μ_i, σ_i²) this is Φ((μ_a − μ_r)/√(σ_a² + σ_r²)),
    r being the best other arm by mean.  A single feasible arm is certain (1.0).

    >>> round(confidence(np.array([0.5, 0.5]), np.array([0.1, 0.1]), 0), 3)
    0.5
    """
    if mean.size == 1:
        return 1.0
    own = mean[index]
    mean[index] = -np.inf  # find the best other arm without copying; restored below
    rival = int(mean.argmax())
    mean[index] = own
    spread = math.hypot(float(std[index]), float(std[rival]))
    gap = float(own - mean[rival])
    if spread == 0.0:
        return 1.0 if gap > 0 else (0.5 if gap == 0 else 0.0)
    return 0.5 * math.erfc(-gap / (spread * math.sqrt(2.0)))


def argmax_share(scores: FloatArray) -> FloatArray:
    """Probability 1 on the best score, split evenly among exact ties."""
    best = scores == scores.max()
    share: FloatArray = best / np.count_nonzero(best)
    return share


def inverse_gap_weights(mean: FloatArray, gamma: float) -> FloatArray:
    """SquareCB's inverse gap weighting (Abe & Long, 1999; Foster & Rakhlin, ICML 2020).

    Every arm but the best gets 1/(K + γ·(μ_best − μ_a)); the best (the first
    of exact ties) gets the rest.  Every arm keeps a positive probability, and the
    further its mean falls below the best, the less it gets.

    >>> inverse_gap_weights(np.array([0.5, 0.5]), 10.0).tolist()
    [0.5, 0.5]
    >>> inverse_gap_weights(np.array([0.9, 0.4, 0.8]), 10.0).round(3).tolist()
    [0.625, 0.125, 0.25]
    """
    k = mean.shape[-1]
    if mean.ndim == 1:  # one context: plain indexing (the hot path of every decision)
        winner = int(mean.argmax())
        one: FloatArray = 1.0 / (k + gamma * (mean[winner] - mean))
        one[winner] = 0.0
        one[winner] = max(0.0, 1.0 - float(one.sum()))
        return one
    best = mean.argmax(axis=-1)[..., None]
    top = np.take_along_axis(mean, best, axis=-1)
    probs: FloatArray = 1.0 / (k + gamma * (top - mean))
    np.put_along_axis(probs, best, 0.0, axis=-1)
    rest = np.maximum(1.0 - probs.sum(axis=-1, keepdims=True), 0.0)
    np.put_along_axis(probs, best, rest, axis=-1)
    return probs


def monte_carlo_best(samples: FloatArray) -> FloatArray:
    """Share of draws (rows) in which each arm (column) has the highest sampled value."""
    winners = np.argmax(samples, axis=1)
    counts = np.bincount(winners, minlength=samples.shape[1]).astype(np.float64)
    share: FloatArray = counts / samples.shape[0]
    return share


#: Bounds of the Monte Carlo draw count of Thompson-style policies.
MAX_DRAWS = 100_000


def check_draws(policy: str, draws: object) -> int:
    """Validate a Monte Carlo draw count, naming the policy in the error."""
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise ConfigError(
            f"policy.{policy}.draws", f"must be an integer in [1, {MAX_DRAWS}], got {draws!r}"
        )
    return draws


def check_share(policy: str, name: str, value: object) -> float:
    """Validate a hyperparameter that is a share in [0, 1], naming it in the error."""
    share = check_positive(policy, name, value, allow_zero=True)
    if share > 1.0:
        raise ConfigError(f"policy.{policy}.{name}", f"must be in [0, 1], got {value!r}")
    return share


def check_positive(policy: str, name: str, value: object, *, allow_zero: bool = False) -> float:
    """Validate a hyperparameter, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"policy.{policy}.{name}", f"must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"policy.{policy}.{name}", f"must be {bound}, got {value!r}")
    return float(value)
