"""Well-known contextual bandit learners behind one small protocol.

Every learner sees raw features (no scaling done for it) and rewards in the
stream's own range; the hyperparameters are the libraries' defaults or the
standard ones, the same on every stream (no per-stream tuning).

* :class:`PerArmLinUCB` — disjoint LinUCB (Li, Chu, Langford & Schapire, WWW 2010):
  one ridge model per arm on ``[1, x]``, α = 1, ridge λ = 1; plays the argmax of
  the upper confidence bound (exact ties split evenly), so it explores only
  through its confidence widths.
* :class:`GreedyRidge` — the same per-arm ridge models, argmax of the mean (α = 0).
* :class:`VWSquareCB` — Vowpal Wabbit ``--cb_explore_adf --squarecb -q sa``
  (SquareCB: Foster & Rakhlin, ICML 2020), and :class:`VWEpsilonGreedy`,
  ``--cb_explore_adf --epsilon 0.05 -q sa``.  One multiline ADF example per
  round: ``shared |s f0:v0 f1:v1 …`` (raw values; VW normalizes online by
  default) and one line ``|a arm=k`` per arm, so ``-q sa`` gives every arm its
  own weights on the context.  VW minimizes cost: cost = −reward; the label is
  ``0:cost:probability`` on the played arm's line (ADF ignores the action index).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

VW_SQUARECB = "--cb_explore_adf --squarecb -q sa --quiet"
VW_EPSILON = "--cb_explore_adf --epsilon 0.05 -q sa --quiet"


class Learner(Protocol):
    """A contextual bandit over ``K`` arms, fed raw feature vectors."""

    def distribution(self, x: FloatArray) -> FloatArray:
        """Probability of playing each of the ``K`` arms in context ``x``; sums to 1, no side effects."""
        ...

    def learn(self, x: FloatArray, arm: int, reward: float, propensity: float) -> None:
        """Learn that ``arm``, played with probability ``propensity`` in context ``x``, earned ``reward``."""
        ...


def argmax_share(scores: FloatArray) -> FloatArray:
    """Probability 1 on the best score, split evenly among exact ties.

    >>> argmax_share(np.array([0.2, 0.5, 0.5])).tolist()
    [0.0, 0.5, 0.5]
    """
    best = scores == scores.max()
    share: FloatArray = best / np.count_nonzero(best)
    return share


class PerArmLinUCB:
    """One ridge model per arm on ``z = [1, x]``; plays ``argmax θ_a·z + α·√(zᵀ A_a⁻¹ z)``.

    ``A_a = ridge·I + Σ z zᵀ`` over the rounds arm ``a`` was played; ``A_a⁻¹`` is
    kept by Sherman–Morrison and ``θ_a = A_a⁻¹ b_a`` is recomputed from it after
    each update (so θ never drifts away from the inverse it is scored with).

    >>> learner = PerArmLinUCB(2, 1)
    >>> for _ in range(20):
    ...     learner.learn(np.ones(1), 1, 1.0, 0.5)
    ...     learner.learn(np.ones(1), 0, 0.0, 0.5)
    >>> learner.distribution(np.ones(1)).tolist()
    [0.0, 1.0]
    """

    def __init__(self, n_arms: int, dim: int, *, alpha: float = 1.0, ridge: float = 1.0) -> None:
        if n_arms < 1 or dim < 0:
            raise ValueError(f"need n_arms >= 1 and dim >= 0, got {n_arms} and {dim}")
        if not (alpha >= 0.0 and ridge > 0.0):
            raise ValueError(f"need alpha >= 0 and ridge > 0, got {alpha} and {ridge}")
        self.alpha = alpha
        self.ridge = ridge
        d = dim + 1
        self.A_inv: FloatArray = np.broadcast_to(np.eye(d) / ridge, (n_arms, d, d)).copy()
        self.b: FloatArray = np.zeros((n_arms, d))
        self.theta: FloatArray = np.zeros((n_arms, d))
        self._z = np.ones(d)

    def _context(self, x: FloatArray) -> FloatArray:
        z = self._z.copy()
        z[1:] = x
        return z

    def scores(self, x: FloatArray) -> FloatArray:
        z = self._context(x)
        mean: FloatArray = self.theta @ z
        if self.alpha == 0.0:
            return mean
        width = np.maximum((self.A_inv @ z) @ z, 0.0)
        ucb: FloatArray = mean + self.alpha * np.sqrt(width)
        return ucb

    def distribution(self, x: FloatArray) -> FloatArray:
        return argmax_share(self.scores(x))

    def learn(self, x: FloatArray, arm: int, reward: float, propensity: float) -> None:
        z = self._context(x)
        A_inv = self.A_inv[arm]
        A_inv_z = A_inv @ z
        A_inv -= np.outer(A_inv_z, A_inv_z) / (1.0 + float(z @ A_inv_z))
        self.b[arm] += reward * z
        self.theta[arm] = A_inv @ self.b[arm]


class GreedyRidge(PerArmLinUCB):
    """Per-arm ridge regression, argmax of the mean (exact ties split): no exploration bonus."""

    def __init__(self, n_arms: int, dim: int, *, ridge: float = 1.0) -> None:
        super().__init__(n_arms, dim, alpha=0.0, ridge=ridge)


class VowpalWabbit:
    """``--cb_explore_adf`` with the given arguments; the PMF is VW's own, as it predicts it."""

    def __init__(self, n_arms: int, args: str) -> None:
        import vowpalwabbit

        self.args = args
        self.workspace = vowpalwabbit.Workspace(args)
        self.actions = [f"|a arm={k}" for k in range(n_arms)]

    def _example(self, x: FloatArray) -> list[str]:
        shared = " ".join(f"f{j}:{v:.9g}" for j, v in enumerate(x.tolist()) if v != 0.0)
        return [f"shared |s {shared}", *self.actions]

    def distribution(self, x: FloatArray) -> FloatArray:
        pmf = np.asarray(self.workspace.predict(self._example(x)), dtype=np.float64)
        if pmf.shape != (len(self.actions),) or not pmf.sum() > 0.0:
            raise RuntimeError(f"VW returned a PMF of shape {pmf.shape} summing to {pmf.sum()}")
        out: FloatArray = pmf / pmf.sum()
        return out

    def learn(self, x: FloatArray, arm: int, reward: float, propensity: float) -> None:
        lines = self._example(x)
        lines[1 + arm] = f"0:{-reward:.9g}:{propensity:.9g} {lines[1 + arm]}"
        self.workspace.learn(lines)


class VWSquareCB(VowpalWabbit):
    def __init__(self, n_arms: int) -> None:
        super().__init__(n_arms, VW_SQUARECB)


class VWEpsilonGreedy(VowpalWabbit):
    def __init__(self, n_arms: int) -> None:
        super().__init__(n_arms, VW_EPSILON)
