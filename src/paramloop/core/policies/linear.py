"""Ridge regression on standardized contexts, shared by LinUCB, LinTS and SquareCB.

Two models of the reward, chosen by the arm design (``model="auto"``):

* **shared** — one ridge model over action-dependent features
  φ(x, a) = [x ⊗ z_a[:m], z_a[m:]]: the context crossed with the arm's first
  ``m`` features (bias, linear terms, one-hots), then the arm-only curvature
  terms.  Neighbouring arms share features, so learning one teaches the others;
  right when arms are points of numeric grids (temperature, max_tokens).
  Because φ(x, a) = M(x) z_a, scoring all arms costs one projection per context,
  G = M(x)ᵀ A⁻¹ M(x) and μ = M(x)ᵀ θ, plus O(k²) per arm.
* **per_arm** — one ridge model of the context per arm (the "disjoint" LinUCB of
  Li et al., 2010).  Right when arms are plain labels (a model route, a prompt
  variant, a tool): there is nothing to share between them, and K small d × d
  models cost K·d² per decision instead of (K·d)².

``auto`` picks per_arm when every arm feature is a 0/1 label (no numeric
dimension, no curvature term) and shared otherwise.

**Standardized inputs.**  The numeric context columns (``ArmDesign.scaled``) are
standardized with running statistics of the contexts learned from (Welford's
mean and variance, each new value winsorized at 5 standard deviations — a band
set at each refresh point once 20 values have been seen — so one outlier cannot
blow up the scale).  The statistics in
use change only at refresh points (updates 1, 2, 4, …, 1024, then every 1024);
the sufficient statistics learned so far are then re-expressed in the new
coordinates exactly (x̃' = T x̃ is affine, so A − Λ ↦ T(A − Λ)Tᵀ and b ↦ Tb), and A
is re-inverted, which also bounds floating-point drift.  Between refreshes a
decision is a pure function of the state, so ``probabilities`` equals what the
next decision logs, and a snapshot restores the same decisions bit for bit.
Rescaling a numeric feature by any affine map leaves the decisions unchanged
(up to rounding): the ridge penalty acts in standardized units.

**Noise.**  The reward noise σ is estimated online from the one-step-ahead
prediction errors e (each residual before the model learns from it):
σ̂² = (n₀·``noise``² + Σe²) / (n₀ + n), n₀ = 10, so ``noise`` is a prior guess that
data overrides.  Posterior widths are σ̂·√(φᵀA⁻¹φ): exploration adapts to how noisy
the rewards are (Bernoulli clicks or a smooth quality score) instead of a constant.

**Prior.**  The model fits r − m_a, with m_a = ``prior_mean`` for every arm but
the baseline, whose prior mean is ``prior_mean + baseline_advantage``: with no
evidence the baseline is the favourite, and moving away from it takes data.
In the shared model each context × arm interaction gets ``interaction_ridge`` × the
ridge; by default 4·(d − 1) (d: context columns besides the bias), so that *all*
the interactions of one arm feature together have, a priori, a quarter of the
variance of one main effect: the effect-hierarchy principle, in units that do not
depend on how many context features a task declares.  (The factor 4 was chosen on
the simulator, the only benchmark with structured arms; label arms use the per-arm
model, which has no interaction prior.)
Rewards reaching a policy are in [0, 1] (the engine rescales a declared reward
range).

Updates are rank one: A⁻¹ by Sherman–Morrison and θ by recursive least squares.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.linalg.blas import dger as _ger  # type: ignore[import-untyped]

from paramloop.core.policies.base import ArmDesign, FloatArray, IntArray, Policy, check_positive
from paramloop.errors import ConfigError, SnapshotError

MODELS = ("auto", "shared", "per_arm")
#: Winsorize a new value at this many standard deviations (once WARMUP values were seen).
WINSOR = 5.0
WARMUP = 20
#: Updates between refreshes once past the doubling schedule 1, 2, 4, …, REFRESH.
REFRESH = 1_024
#: Default interaction ridge per context column (shared model): see "Prior" above.
INTERACTION_PRIOR = 4.0
#: Weight, in observations, of the prior guess of the reward noise.
NOISE_PRIOR_WEIGHT = 10.0


def is_label_design(design: ArmDesign) -> bool:
    """Whether every arm feature is a 0/1 label (no numeric dimension, no curvature term)."""
    features = design.features
    if design.n_interacting != features.shape[1]:
        return False
    rest = features[:, 1:]
    return bool(np.all((rest == 0.0) | (rest == 1.0)))


class LinearPolicy(Policy):
    """Base of the linear policies: ridge posterior N(θ, noise² A⁻¹), A = Λ + Σ φφᵀ."""

    def __init__(
        self,
        design: ArmDesign,
        *,
        model: str = "auto",
        ridge: float = 1.0,
        noise: float = 0.3,
        prior_mean: float = 0.5,
        baseline_advantage: float = 0.01,
        interaction_ridge: float | None = None,
        standardize: bool = True,
    ) -> None:
        super().__init__(design)
        if model not in MODELS:
            raise ConfigError(
                f"policy.{self.name}.model", f"must be one of {', '.join(MODELS)}, got {model!r}"
            )
        if not isinstance(standardize, bool):
            raise ConfigError(
                f"policy.{self.name}.standardize", f"must be true or false, got {standardize!r}"
            )
        self.model_option = model
        self.model = model if model != "auto" else self._auto_model(design)
        self.ridge = check_positive(self.name, "ridge", ridge)
        self.noise = check_positive(self.name, "noise", noise)
        self.prior_mean = check_positive(self.name, "prior_mean", prior_mean, allow_zero=True)
        self.baseline_advantage = check_positive(
            self.name, "baseline_advantage", baseline_advantage, allow_zero=True
        )
        if self.prior_mean + self.baseline_advantage > 1.0:
            raise ConfigError(
                f"policy.{self.name}.prior_mean",
                "prior_mean + baseline_advantage must be <= 1 (rewards lie in [0, 1])",
            )
        dc, m = design.context_dim, design.n_interacting
        self.interaction_ridge_option = interaction_ridge
        self.interaction_ridge = (
            float(INTERACTION_PRIOR * max(1, dc - 1))
            if interaction_ridge is None
            else check_positive(self.name, "interaction_ridge", interaction_ridge)
        )
        self.standardize = standardize
        n_features = design.features.shape[1]
        self.arm_prior = np.full(design.n_arms, self.prior_mean)
        self.arm_prior[design.baseline] += self.baseline_advantage
        # Running moments of the contexts learned from, and the standardization in use.
        self.scaled = np.zeros(dc, dtype=bool)
        if standardize:
            self.scaled[list(design.scaled)] = True
        self._scaled_weight = self.scaled.astype(np.float64)  # 1 on scaled columns, else 0
        self._winsor: tuple[FloatArray, FloatArray] | None = None
        self.seen = np.zeros(1)
        # Count and sum of squared one-step-ahead errors (floats: updated on every learn).
        self.residual_n = 0.0
        self.residual_ss = 0.0
        self.running_mean = np.zeros(dc)
        self.running_m2 = np.zeros(dc)
        self.center = np.zeros(dc)
        self.scale = np.ones(dc)
        if self.model == "per_arm":
            self.dim = dc
            prior = np.full(dc, self.ridge)
            k = design.n_arms
            self.prior_precision = prior
            self.A: FloatArray = np.broadcast_to(np.diag(prior), (k, dc, dc)).copy()
            self.A_inv: FloatArray = np.broadcast_to(np.diag(1.0 / prior), (k, dc, dc)).copy()
            self.b: FloatArray = np.zeros((k, dc))
            self.theta: FloatArray = np.zeros((k, dc))
            return
        self.dim = dc * m + (n_features - m)
        # A context × arm interaction may get a stronger ridge than a main effect.
        prior = np.full(self.dim, self.ridge)
        crossed = np.zeros((dc, m), dtype=bool)
        crossed[1:, 1:] = True
        prior[: dc * m][crossed.ravel()] *= self.interaction_ridge
        self.prior_precision = prior
        self.A = np.diag(prior)
        self.A_inv = np.diag(1.0 / prior)
        self.b = np.zeros(self.dim)
        self.theta = np.zeros(self.dim)
        # M(x) has x in fixed positions of its upper block and an identity lower block.
        self._M = np.zeros((self.dim, n_features))
        self._M[dc * m :, m:] = np.eye(n_features - m)
        # A writeable view of the entries of M that hold x: M[i·m + j, j] = x_i.
        self._x_slots = np.einsum("ijj->ij", self._M[: dc * m, :m].reshape(dc, m, m))
        self._Z_for: IntArray | None = None
        self._Z: FloatArray = design.features

    @staticmethod
    def _auto_model(design: ArmDesign) -> str:
        return "per_arm" if is_label_design(design) else "shared"

    def linear_hyperparameters(self) -> dict[str, Any]:
        return {
            "model": self.model_option,
            "ridge": self.ridge,
            "noise": self.noise,
            "prior_mean": self.prior_mean,
            "baseline_advantage": self.baseline_advantage,
            "interaction_ridge": self.interaction_ridge_option,
            "standardize": self.standardize,
        }

    # -- inputs -----------------------------------------------------------------------

    def standardized(self, x: FloatArray) -> FloatArray:
        """The context vector (or rows of contexts) in the model's coordinates."""
        if x.shape[-1] != self.design.context_dim:
            raise ValueError(
                f"context vector must have shape ({self.design.context_dim},), got {x.shape}"
            )
        if not self.standardize:
            return x
        out: FloatArray = (x - self.center) / self.scale
        return out

    def project(self, x: FloatArray) -> FloatArray:
        """M(x) of the shared model (``x`` already standardized): φ(x, a) = M(x) @ z_a."""
        if self.model != "shared":
            raise ValueError("project() belongs to the shared model")
        if x.shape != (self.design.context_dim,):
            raise ValueError(
                f"context vector must have shape ({self.design.context_dim},), got {x.shape}"
            )
        # Written in place: callers (the engine holds the task's lock) use M before the next call.
        self._x_slots[...] = x[:, None]
        return self._M

    # -- moments ----------------------------------------------------------------------

    def moments(
        self, x: FloatArray, arms: IntArray
    ) -> tuple[FloatArray, FloatArray, FloatArray | None, FloatArray | None]:
        """(mean reward per arm, variance factor φᵀA⁻¹φ per arm, projected θ, projected A⁻¹).

        The projections exist for the shared model only (``None`` for per_arm).
        """
        xs = self.standardized(x)
        if self.model == "per_arm":
            Ainv = self.A_inv[arms]
            mean = self.theta[arms] @ xs
            mean += self.arm_prior[arms]
            width = np.einsum("aij,i,j->a", Ainv, xs, xs)
            np.maximum(width, 0.0, out=width)
            return mean, width, None, None
        M = self.project(xs)
        Mt = M.T
        mu = Mt @ self.theta
        G = Mt @ (self.A_inv @ M)
        if arms is not self._Z_for:  # the engine passes the same feasible-arm array every time
            self._Z, self._Z_for = self.design.features[arms], arms
        Z = self._Z
        mean = Z @ mu
        mean += self.arm_prior[arms]
        width = (Z @ G * Z).sum(axis=1)
        np.maximum(width, 0.0, out=width)
        return mean, width, mu, G

    def moments_many(self, X: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        """(mean, φᵀA⁻¹φ) of every arm in every row of ``X``: each (n, len(arms)).

        Shared model: with φ(x, a) = [x ⊗ z₁, z₂] (z₁ = z_a[:m], z₂ = z_a[m:]) and
        A⁻¹ in blocks P, Q, R, the width is xᵀC_a x + 2xᵀu_a + c_a for per-arm
        C_a = Σ z₁ⱼ P[·,j,·,l] z₁ₗ, u_a = Σ z₁ⱼ Q[·,j,·] z₂ and c_a = z₂ᵀRz₂, which
        are computed once: a batch costs O(n·(d²m² + k·m²)/4), not n projections.
        """
        dc, m = self.design.context_dim, self.design.n_interacting
        if X.ndim != 2 or X.shape[1] != dc:
            raise ValueError(f"contexts must have shape (n, {dc}), got {X.shape}")
        X = self.standardized(X)
        if self.model == "per_arm":
            mean = X @ self.theta[arms].T + self.arm_prior[arms]
            width = np.empty_like(mean)
            for column, arm in enumerate(arms):
                width[:, column] = np.einsum("ni,ij,nj->n", X, self.A_inv[arm], X)
            np.maximum(width, 0.0, out=width)
            return mean, width
        Z = self.design.features[arms]
        Z1, Z2 = Z[:, :m], Z[:, m:]
        cut = dc * m
        mean = X @ (self.theta[:cut].reshape(dc, m) @ Z1.T)
        mean += Z2 @ self.theta[cut:] + self.arm_prior[arms]
        P = self.A_inv[:cut, :cut].reshape(dc, m, dc, m)
        Q = self.A_inv[:cut, cut:].reshape(dc, m, -1)
        R = self.A_inv[cut:, cut:]
        U = np.einsum("aj,ijs,as->ai", Z1, Q, Z2)
        c = np.einsum("as,st,at->a", Z2, R, Z2)
        # The quadratic part Σ x_i x_k z_j z_l P[i,j,k,l] is bilinear in the pairs x_i x_k
        # (i ≤ k) and z_j z_l (j ≤ l): pairs(x) @ S @ pairs(z)ᵀ.  S is computed once, so a
        # row costs d(d+1)/2 · m(m+1)/2 + k · m(m+1)/2 multiply-adds, not k · d².
        i, k = np.triu_indices(dc)
        j, jj = np.triu_indices(m)
        S = P[i[:, None], j[None, :], k[:, None], jj[None, :]]
        S = S + np.where((i != k)[:, None], P[k[:, None], j[None, :], i[:, None], jj[None, :]], 0.0)
        S *= np.where(j == jj, 1.0, 2.0)[None, :]
        arm_pairs = Z1[:, j] * Z1[:, jj]
        linear = 2.0 * U.T
        width = np.empty_like(mean)
        step = 8_192
        for start in range(0, X.shape[0], step):
            rows = X[start : start + step]
            pairs = rows[:, i] * rows[:, k]
            width[start : start + step] = (pairs @ S) @ arm_pairs.T + rows @ linear + c
        np.maximum(width, 0.0, out=width)
        return mean, width

    @property
    def noise_scale(self) -> float:
        """σ̂: the estimated standard deviation of the reward noise."""
        weight = NOISE_PRIOR_WEIGHT
        return math.sqrt((weight * self.noise**2 + self.residual_ss) / (weight + self.residual_n))

    def _estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        mean, width, _, _ = self.moments(x, arms)
        return mean, self.noise_scale * np.sqrt(width)

    # -- learning ---------------------------------------------------------------------

    def _update(self, x: FloatArray, arm: int, reward: float) -> None:
        if x.shape != (self.design.context_dim,):
            raise ValueError(
                f"context vector must have shape ({self.design.context_dim},), got {x.shape}"
            )
        self._observe(x)
        xs = self.standardized(x)
        residual = reward - float(self.arm_prior[arm])
        if self.model == "per_arm":
            A_inv = self.A_inv[arm]
            A_inv_x = A_inv @ xs
            gain = A_inv_x / (1.0 + float(xs @ A_inv_x))
            theta = self.theta[arm]
            error = residual - float(xs @ theta)
            theta += gain * error
            A_inv -= np.outer(A_inv_x, gain)
            self.A[arm] += np.outer(xs, xs)
            self.b[arm] += residual * xs
        else:
            phi = self.project(xs) @ self.design.features[arm]
            A_inv_phi = self.A_inv @ phi
            gain = A_inv_phi / (1.0 + float(phi @ A_inv_phi))
            error = residual - float(phi @ self.theta)
            self.theta += gain * error
            # Rank-one updates in place with BLAS dger (on the transposed, Fortran-ordered
            # views of the C-ordered matrices): 4x faster than subtracting an np.outer.
            _ger(-1.0, A_inv_phi, gain, a=self.A_inv.T, overwrite_a=True)
            _ger(1.0, phi, phi, a=self.A.T, overwrite_a=True)
            self.b += residual * phi
        self.residual_n += 1.0
        self.residual_ss += error * error
        n = self.revision + 1
        if (n <= REFRESH and n & (n - 1) == 0) or n % REFRESH == 0:
            self._refresh()

    def _observe(self, x: FloatArray) -> None:
        """Fold ``x`` into the running moments of the scaled columns (winsorized after warm-up)."""
        if not self.standardize:
            return
        n = float(self.seen[0])
        value = x if self._winsor is None else np.clip(x, self._winsor[0], self._winsor[1])
        n += 1.0
        delta = (value - self.running_mean) * self._scaled_weight
        self.running_mean += delta / n
        self.running_m2 += delta * (value - self.running_mean)
        self.seen[0] = n

    def _refresh(self) -> None:
        """Adopt the running statistics (re-expressing what was learned) and re-invert A."""
        if self.standardize:
            n = float(self.seen[0])
            if n >= WARMUP:  # the winsorizing band until the next refresh
                spread = WINSOR * np.sqrt(self.running_m2 / (n - 1.0))
                self._winsor = (self.running_mean - spread, self.running_mean + spread)
            center = np.where(self.scaled, self.running_mean, 0.0)
            variance = self.running_m2 / max(n - 1.0, 1.0)
            scale = np.where(self.scaled & (variance > 1e-24), np.sqrt(variance), 1.0)
            if n >= 1 and not (
                np.array_equal(center, self.center) and np.array_equal(scale, self.scale)
            ):
                self._rebase(center, scale)
        self._reinvert()

    def _rebase(self, center: FloatArray, scale: FloatArray) -> None:
        # x̃' = T x̃: x = c + s·x̃, so x̃' = (c − c')/s' + (s/s')·x̃ (the bias column stays 1).
        dc = self.design.context_dim
        T = np.diag(self.scale / scale)
        T[:, 0] += (self.center - center) / scale
        self.center, self.scale = center, scale
        if self.model == "per_arm":
            data = self.A - np.diag(self.prior_precision)
            self.A = T @ data @ T.T + np.diag(self.prior_precision)
            self.b = self.b @ T.T
            return
        m = self.design.n_interacting
        cut = dc * m
        full = np.eye(self.dim)
        full[:cut, :cut] = np.kron(T, np.eye(m))
        data = self.A - np.diag(self.prior_precision)
        self.A = full @ data @ full.T + np.diag(self.prior_precision)
        self.b = full @ self.b

    def _reinvert(self) -> None:
        inverse = np.asarray(np.linalg.inv(self.A), dtype=np.float64)
        self.A = (self.A + np.swapaxes(self.A, -1, -2)) / 2
        self.A_inv = np.ascontiguousarray((inverse + np.swapaxes(inverse, -1, -2)) / 2)
        self.theta = np.einsum("...ij,...j->...i", self.A_inv, self.b)

    # -- state ------------------------------------------------------------------------

    def _state(self) -> dict[str, FloatArray]:
        # A⁻¹ and θ are stored as they are (not recomputed) so a restored policy decides
        # bit-identically to the original.
        return {
            "A": self.A,
            "b": self.b,
            "A_inv": self.A_inv,
            "theta": self.theta,
            "seen": self.seen,
            "residuals": np.array([self.residual_n, self.residual_ss]),
            "winsor": np.full((2, self.design.context_dim), np.nan)
            if self._winsor is None
            else np.stack(self._winsor),
            "running_mean": self.running_mean,
            "running_m2": self.running_m2,
            "center": self.center,
            "scale": self.scale,
        }

    def _load_state(self, state: Mapping[str, FloatArray]) -> None:
        for key, current in self._state().items():
            value = state.get(key)
            if value is None or value.shape != current.shape:
                raise SnapshotError(
                    f"{self.label} snapshot does not match a {self.model} model of "
                    f"{self.dim} dimensions ({key})"
                )
        self.A = np.ascontiguousarray(state["A"], dtype=np.float64)
        self.b = np.array(state["b"], dtype=np.float64)
        self.A_inv = np.ascontiguousarray(state["A_inv"], dtype=np.float64)
        self.theta = np.array(state["theta"], dtype=np.float64)
        self.seen = np.array(state["seen"], dtype=np.float64)
        self.residual_n, self.residual_ss = (float(v) for v in state["residuals"])
        band = np.array(state["winsor"], dtype=np.float64)
        self._winsor = None if np.isnan(band).all() else (band[0], band[1])
        self.running_mean = np.array(state["running_mean"], dtype=np.float64)
        self.running_m2 = np.array(state["running_m2"], dtype=np.float64)
        self.center = np.array(state["center"], dtype=np.float64)
        self.scale = np.array(state["scale"], dtype=np.float64)

    def merge(self, other: LinearPolicy) -> None:
        """Add another replica's sufficient statistics (both started from the same prior).

        The other replica's statistics are first re-expressed in this one's
        coordinates; the running moments combine by Chan et al.'s parallel formula.
        """
        if (
            other.dim != self.dim
            or other.model != self.model
            or other.design.digest != self.design.digest
        ):
            raise ValueError("cannot merge policies of different designs")
        twin = copy.deepcopy(other)
        twin._rebase(self.center, self.scale)
        self.A += twin.A - np.diag(other.prior_precision)
        self.b += twin.b
        self.residual_n += other.residual_n
        self.residual_ss += other.residual_ss
        n1, n2 = float(self.seen[0]), float(other.seen[0])
        if n2 > 0:
            total = n1 + n2
            delta = other.running_mean - self.running_mean
            self.running_mean = self.running_mean + delta * (n2 / total)
            self.running_m2 = self.running_m2 + other.running_m2 + delta**2 * (n1 * n2 / total)
            self.seen[0] = total
        self.revision += other.revision
        self._reinvert()
