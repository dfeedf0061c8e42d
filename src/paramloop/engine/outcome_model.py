"""The outcome-model step of off-policy evaluation: predicted rewards for every arm, cross-fitted.

The direct method and the doubly robust estimators take an array of predicted
rewards ``q̂[i, a]`` — the expected reward of arm ``a`` in round ``i``'s context
— and never fit anything themselves.  :func:`fit_predict` makes that array.

**Design.**  A (context, arm) pair is represented as ``φ(x, a) = e_a ⊕ x``: the
arm's one-hot vector next to the context features.  A linear model on ``φ`` is
a per-arm intercept plus context coefficients shared by all arms,

    η(x, a) = b + β_a + γ·x,

which is what the usual OPE outcome models (obp's ``RegressionModel`` among
them) fit.  Per-arm context coefficients (``e_a ⊗ x``) would multiply the
parameters by the number of arms; logged data rarely carries enough rewards
per arm for them (the Open Bandit sample has about 40 clicks over 80 items).
For the default models the shared structure also makes prediction one matrix
product: ``η = (b + X γ) 1ᵀ + 1 βᵀ`` gives all ``n × K`` predictions at the
cost of ``n × d`` — the ``n·K`` design rows are never built.  They are fitted
on a sparse ``φ`` with one BLAS thread (these problems are small; on a busy
machine idle BLAS threads cost more than they compute).  Any other
scikit-learn estimator is fitted on a dense ``φ`` as it is, and predicts one
arm at a time.

**Cross-fitting.**  Rows are split into ``folds`` parts; row ``i``'s
predictions come from a model trained on the other parts only, so its own
reward never informs its prediction (Chernozhukov et al., "Double/debiased
machine learning", Econometrics Journal 2018).  The split is stratified by
reward: rows are shuffled with ``rng``, ordered by reward (stable), and dealt
round-robin — with rare binary rewards (clicks) every part gets its share of
the positives.

Predictions are returned as the model gives them: a ridge fit can leave the
reward range, and nothing clips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from scipy import sparse  # type: ignore[import-untyped, unused-ignore]
from sklearn.base import clone, is_classifier
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from paramloop.errors import InputError

#: The built-in outcome models; ``"auto"`` is logistic for rewards in {0, 1}, else ridge.
ModelName = Literal["auto", "ridge", "logistic"]
MODEL_NAMES: tuple[str, ...] = ("auto", "ridge", "logistic")

#: How many offending rows an error message lists.
_SHOWN_ROWS = 5


class RewardModel(Protocol):
    """A scikit-learn regressor or classifier (anything with ``fit`` and ``predict``)."""

    def fit(self, X: Any, y: Any) -> Any: ...

    def predict(self, X: Any) -> Any: ...


def fit_predict(
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    n_actions: int,
    *,
    model: ModelName | RewardModel = "auto",
    folds: int = 2,
    alpha: float = 1.0,
    rng: np.random.Generator | int = 0,
) -> np.ndarray:
    """Cross-fitted predicted rewards ``q̂`` of shape ``(n, n_actions)``.

    :func:`fit_outcome_model` followed by a prediction for every row; see there
    for the arguments and the errors.

    >>> X = np.zeros((6, 0))
    >>> q = fit_predict(X, np.array([0, 1, 0, 1, 0, 1]), np.array([1.0, 3, 1, 3, 1, 3]), 2, alpha=1e-9)
    >>> np.round(q, 6).tolist()[0]
    [1.0, 3.0]
    """
    fitted = fit_outcome_model(
        features, actions, rewards, n_actions, model=model, folds=folds, alpha=alpha, rng=rng
    )
    X = np.asarray(features, dtype=np.float64)
    return fitted.predict(X, np.arange(X.shape[0]))


@dataclass(frozen=True)
class CrossFitted:
    """One fitted model per fold; row ``i`` is predicted by the model that never saw it."""

    fold_of: np.ndarray
    models: tuple[Any, ...]
    n_actions: int
    classifier: bool
    built_in: bool

    def predict(
        self, X: np.ndarray, rows: np.ndarray, arms: np.ndarray | None = None
    ) -> np.ndarray:
        """(len(rows), len(arms)) cross-fitted predictions for the logged rows ``rows``.

        ``X`` holds those rows' contexts; ``arms`` (default: all K) the arms to
        predict.  A caller can predict a chunk of rows and only the arms it
        needs: the full (n, K) array of a large log need never exist.
        """
        columns = np.arange(self.n_actions) if arms is None else np.asarray(arms, dtype=np.intp)
        out = np.empty((len(rows), len(columns)))
        fold = self.fold_of[rows]
        for k, fitted in enumerate(self.models):
            part = fold == k
            if not part.any():
                continue
            if self.built_in:
                out[part] = (
                    _predict_linear(fitted, X[part], self.n_actions, self.classifier)[:, columns]
                    if arms is None
                    else _predict_linear(fitted, X[part], self.n_actions, self.classifier, columns)
                )
            else:
                out[part] = _predict_per_arm(fitted, X[part], self.n_actions, self.classifier)[
                    :, columns
                ]
        if not np.all(np.isfinite(out)):
            name = type(self.models[0]).__name__
            raise InputError("model", f"{name} predicted non-finite rewards")
        return out


def fit_outcome_model(
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    n_actions: int,
    *,
    model: ModelName | RewardModel = "auto",
    folds: int = 2,
    alpha: float = 1.0,
    rng: np.random.Generator | int = 0,
    max_train_rows: int | None = None,
) -> CrossFitted:
    """The cross-fitted outcome model, which predicts ``q̂`` for any logged row and arm.

    ``features`` is the ``(n, d)`` context of each logged round (``d`` may be 0),
    ``actions`` the logged arm indices in ``[0, n_actions)``, ``rewards`` the
    observed rewards.  ``model`` is ``"ridge"`` (:class:`sklearn.linear_model.Ridge`
    with penalty ``alpha``), ``"logistic"`` (:class:`~sklearn.linear_model.LogisticRegression`
    with ``C = 1 / alpha``; rewards must be 0 or 1 and ``q̂`` is a click
    probability), ``"auto"`` (logistic when every reward is 0 or 1, else ridge),
    or any scikit-learn estimator instance, which is cloned per fold and never
    modified; a classifier predicts the probability of reward 1.  ``rng`` (a
    generator or a seed) shuffles rows into folds.  ``max_train_rows`` caps each fold's
    training rows at a random subset of that size (``None``: all of the other folds).

    Raises :class:`~paramloop.errors.InputError` naming the argument (and the
    first offending rows) when shapes disagree, values are not finite, an
    action lies outside ``[0, n_actions)``, ``folds`` is not in ``[2, n]``, a
    classifier gets rewards other than 0/1, a classifier's training part holds
    a single reward value, or the model predicts values that are not finite.
    """
    X, a, r = _check_inputs(features, actions, rewards, n_actions)
    n = r.shape[0]
    folds = _check_folds(folds, n)
    if not np.isfinite(alpha) or alpha <= 0:
        raise InputError("alpha", f"must be a finite number > 0, got {alpha!r}")
    binary = bool(np.all((r == 0.0) | (r == 1.0)))
    if isinstance(model, str):
        if model not in MODEL_NAMES:
            raise InputError(
                "model", f"must be one of {', '.join(MODEL_NAMES)} or an estimator, got {model!r}"
            )
        name = ("logistic" if binary else "ridge") if model == "auto" else model
        # Tight tolerances: the fit, not the solver's stopping point, decides the predictions.
        estimator: Any = (
            LogisticRegression(C=1.0 / alpha, tol=1e-8, max_iter=1_000)
            if name == "logistic"
            else Ridge(alpha=alpha, solver="sparse_cg", tol=1e-10)
        )
        built_in = True
    else:
        if not (hasattr(model, "fit") and hasattr(model, "predict")):
            raise InputError("model", f"must have fit() and predict(), got {type(model).__name__}")
        estimator = model
        built_in = False
    classifier = bool(is_classifier(estimator))
    if classifier and not binary:
        bad = np.flatnonzero((r != 0.0) & (r != 1.0))
        raise InputError(
            "rewards",
            f"a classifier outcome model needs rewards in {{0, 1}}; rows {_rows(bad)} are not",
        )

    if max_train_rows is not None and (
        isinstance(max_train_rows, bool)
        or not isinstance(max_train_rows, int)
        or max_train_rows < 2
    ):
        raise InputError(
            "max_train_rows", f"must be an integer >= 2 or None, got {max_train_rows!r}"
        )
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    fold_of = _assign_folds(r, folds, generator)
    models = []
    for k in range(folds):
        test = fold_of == k
        train = ~test
        if max_train_rows is not None and int(train.sum()) > max_train_rows:
            # A random subset of the other folds: still cross-fitted (row i's model never
            # saw row i), at a fraction of the cost on a large log.
            keep = generator.choice(np.flatnonzero(train), size=max_train_rows, replace=False)
            train = np.zeros(n, dtype=bool)
            train[keep] = True
        if classifier and np.unique(r[train]).size < 2:
            raise InputError(
                "rewards",
                f"the training part of fold {k} (every row outside it) has only reward "
                f"{r[train][0]:g}; a classifier needs both 0 and 1 — use fewer folds or model='ridge'",
            )
        fitted = clone(estimator)
        if built_in:
            # One BLAS thread: these problems are small, and L-BFGS's many tiny BLAS calls
            # wait on idle threads for longer than they compute when the machine is busy.
            with threadpool_limits(limits=1, user_api="blas"):
                fitted.fit(_sparse_design(X[train], a[train], n_actions), r[train])
        else:
            fitted.fit(_design(X[train], a[train], n_actions), r[train])
        models.append(fitted)
    return CrossFitted(fold_of, tuple(models), n_actions, classifier, built_in)


def _check_inputs(
    features: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_actions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(n_actions, bool) or not isinstance(n_actions, int | np.integer) or n_actions < 1:
        raise InputError("n_actions", f"must be an integer >= 1, got {n_actions!r}")
    r = _floats("rewards", rewards)
    if r.ndim != 1 or r.shape[0] == 0:
        raise InputError("rewards", f"must be a non-empty 1-D array, got shape {r.shape}")
    n = r.shape[0]
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        raise InputError("rewards", f"must be finite; rows {_rows(bad)} are not")
    a_raw = np.asarray(actions)
    if a_raw.shape != (n,):
        raise InputError("actions", f"must have shape ({n},) like rewards, got {a_raw.shape}")
    if a_raw.dtype.kind not in "iuf":
        raise InputError("actions", f"must be integer arm indices, got dtype {a_raw.dtype}")
    if a_raw.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a_raw) | (a_raw != np.round(a_raw)))
        if bad.size:
            raise InputError("actions", f"must be whole numbers; rows {_rows(bad)} are not")
    a = a_raw.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= n_actions))
    if bad.size:
        raise InputError(
            "actions",
            f"must lie in [0, {n_actions}); rows {_rows(bad)} hold {a[bad[:_SHOWN_ROWS]].tolist()}",
        )
    X = _floats("features", features)
    if X.ndim != 2 or X.shape[0] != n:
        raise InputError("features", f"must have shape ({n}, d) like rewards, got {X.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
    if bad.size:
        raise InputError("features", f"must be finite; rows {_rows(bad)} are not")
    return X, a, r


def _floats(name: str, value: object) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"must be numbers ({exc})") from None


def _check_folds(folds: int, n: int) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or not 2 <= folds <= n:
        raise InputError(
            "folds",
            f"must be an integer in [2, {n}] (cross-fitting needs two parts), got {folds!r}",
        )
    return int(folds)


def _assign_folds(r: np.ndarray, folds: int, rng: np.random.Generator | int) -> np.ndarray:
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shuffled = generator.permutation(r.shape[0])
    dealt = shuffled[np.argsort(r[shuffled], kind="stable")]
    fold_of = np.empty(r.shape[0], dtype=np.int64)
    fold_of[dealt] = np.arange(r.shape[0]) % folds
    return fold_of


def _sparse_design(X: np.ndarray, a: np.ndarray, n_actions: int) -> Any:
    # Sparse products run single-threaded in scipy; dense BLAS threads can be slowed
    # tenfold on a busy machine, and a one-hot design is mostly zeros anyway.
    n = a.shape[0]
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), a)), shape=(n, n_actions))
    return sparse.hstack([onehot, sparse.csr_matrix(X)], format="csr")


def _design(X: np.ndarray, a: np.ndarray, n_actions: int) -> np.ndarray:
    design = np.zeros((a.shape[0], n_actions + X.shape[1]))
    design[np.arange(a.shape[0]), a] = 1.0
    design[:, n_actions:] = X
    return design


def _predict_linear(
    fitted: Any,
    X: np.ndarray,
    n_actions: int,
    classifier: bool,
    arms: np.ndarray | None = None,
) -> np.ndarray:
    coef = np.asarray(fitted.coef_, dtype=np.float64).reshape(-1)
    intercept = float(np.asarray(fitted.intercept_).reshape(-1)[0])
    per_arm = coef[:n_actions] if arms is None else coef[arms]
    eta = (intercept + X @ coef[n_actions:])[:, None] + per_arm[None, :]
    if classifier:
        # LogisticRegression's coefficients point to classes_[1], which is reward 1;
        # σ(η) = exp(−log(1 + e^−η)) never overflows.
        return np.exp(-np.logaddexp(0.0, -eta))
    return eta


def _predict_per_arm(fitted: Any, X: np.ndarray, n_actions: int, classifier: bool) -> np.ndarray:
    out = np.empty((X.shape[0], n_actions))
    design = np.zeros((X.shape[0], n_actions + X.shape[1]))
    design[:, n_actions:] = X
    positive = 0
    if classifier:
        classes = np.asarray(fitted.classes_, dtype=np.float64).tolist()
        positive = classes.index(1.0)
    for arm in range(n_actions):
        design[:, arm] = 1.0
        if classifier:
            column = np.asarray(fitted.predict_proba(design))[:, positive]
        else:
            column = np.asarray(fitted.predict(design), dtype=np.float64).reshape(-1)
        if column.shape != (X.shape[0],):
            raise InputError(
                "model",
                f"{type(fitted).__name__} returned shape {column.shape} for {X.shape[0]} rows",
            )
        out[:, arm] = column
        design[:, arm] = 0.0
    return out


def _rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in rows[:_SHOWN_ROWS])
    more = rows.size - _SHOWN_ROWS
    return shown + (f" (and {more} more)" if more > 0 else "")
