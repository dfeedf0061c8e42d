"""Public bandit streams that are not paramloop's simulator.

Every stream is built by a function ``(seed, rounds) -> Stream | LoggedStream``
listed in :data:`STREAMS`.  Features stay in their natural scale (no
standardization here): a learner has to cope with raw columns such as pixel
intensities (0–16), tumour areas (up to ~2,500) or region centroids (0–250).

**Supervised to bandit.**  The arms are the classes; the reward of an arm is 1
when it is the row's true label and 0 otherwise, so every round's reward of
every arm is known (a :class:`Stream` holds the full ``(rounds, arms)`` reward
matrix) and regret-free references (best arm per round, uniform play) are exact.

**Rounds.**  Every :class:`Stream` has exactly ``rounds`` rounds: the rows are
shuffled by the seed and, when the data set has fewer rows, fresh shuffles are
concatenated (pass after pass) until there are enough; at the default 5,000
rounds iris (150 rows) is played about 33 times, wine (178) 28, breast_cancer
(569) 9, Phishing (1,250) 4, digits (1,797) and ImageSegments (2,310) about
2.5 times, Bananas (5,300) less than once.  The synthetic streams draw a new
problem per seed (``random_state=seed``) with exactly ``rounds`` rows.

The streams (arms × features):

``iris`` (3 × 4), ``wine`` (3 × 13), ``breast_cancer`` (2 × 30), ``digits`` (10 × 64)
    scikit-learn's bundled copies of the UCI data sets.
``phishing`` (2 × 9), ``bananas`` (2 × 2), ``image_segments`` (7 × 18)
    River's data sets that ship inside its wheel (``river.datasets.Phishing``,
    ``Bananas``, ``ImageSegments``); River's other classification sets
    (Elec2, Insects, Keystroke, CreditCard, …) download on first use and are
    not used.
``many_arms`` (20 × 30)
    ``make_classification``: 20 classes, 30 features of which 20 informative and
    5 redundant, one cluster per class.
``drift`` (4 × 10)
    ``make_classification`` (4 classes, 5 informative + 2 redundant features);
    halfway through, the label → arm mapping rotates by one (the arm that was
    right for class c becomes right for class c − 1), so a learner that does not
    forget keeps playing the old mapping.
``cost_router`` (4 × 64)
    Model routing with costs, on digits.  Each seed splits the 1,797 digits in
    two; on one half it trains four "models" of growing size — logistic
    regression on the first 2, 6 and 16 principal components and on all 64
    pixels — with costs 2/64, 6/64, 16/64 and 1.  The stream is the other half
    (context = the raw pixels); the reward of model ``m`` is
    ``[m is right] − λ·cost(m)``, λ = 0.5, in [−0.5, 1].  The cheapest model is
    wrong on about half the rows and the dearest costs half a reward, so the best
    fixed model is a middle one, and the best per row is the cheapest model that
    is right on it.
``obd`` (34 × 55)
    The Open Bandit Dataset's ``men`` campaign under the uniform-random logging
    policy (10,000 logged impressions, all three positions, the position not
    used; propensity 1/34; reward = click; context = the log's 55 columns: user
    feature one-hots and user–item affinities).  Each seed shuffles the rows:
    the first half is learned from off-policy, the second half evaluates the
    learned policy by IPS and SNIPS.  ``--rounds`` below 5,000 uses
    ``2 × rounds`` rows (for ``--quick``).  The campaign ``all`` (80 items × 100
    columns) is left out: with paramloop's current arm design a linear policy
    crosses every context column with every arm (8,080 coefficients), too slow
    for this suite.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn import datasets as sk_datasets
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from paramloop.datasets import obd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: Cost weight of the ``cost_router`` stream, and its models' principal components (64 = all pixels).
ROUTER_LAMBDA = 0.5
ROUTER_COMPONENTS = (2, 6, 16, 64)
OBD_CAMPAIGN: obd.Campaign = "men"


@dataclass(frozen=True, eq=False)
class Stream:
    """A full-information stream: ``rewards[t, a]`` is arm ``a``'s reward in round ``t``.

    ``X`` is (rounds, features) in the data's natural scale; every reward lies in
    ``reward_range`` = (low, high).
    """

    name: str
    X: FloatArray
    rewards: FloatArray
    reward_range: tuple[float, float]
    description: str

    def __post_init__(self) -> None:
        _check_features(self.name, self.X)
        if self.rewards.ndim != 2 or self.rewards.shape[0] != self.X.shape[0]:
            raise ValueError(
                f"{self.name}: rewards must be (rounds, arms) with {self.X.shape[0]} rounds, "
                f"got {self.rewards.shape}"
            )
        _check_rewards(self.name, self.rewards, self.reward_range)

    @property
    def n_rounds(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_arms(self) -> int:
        return int(self.rewards.shape[1])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])


@dataclass(frozen=True, eq=False)
class LoggedStream:
    """Logged rounds ``(X[i], actions[i], rewards[i], propensities[i])`` of a logging policy.

    Rows ``[0, n_train)`` are learned from off-policy; the rest evaluate the
    learned policy (:func:`bench_streams.replay`).
    """

    name: str
    X: FloatArray
    actions: IntArray
    rewards: FloatArray
    propensities: FloatArray
    n_arms: int
    n_train: int
    reward_range: tuple[float, float]
    description: str

    def __post_init__(self) -> None:
        _check_features(self.name, self.X)
        n = self.X.shape[0]
        for field, array in (
            ("actions", self.actions),
            ("rewards", self.rewards),
            ("propensities", self.propensities),
        ):
            if array.shape != (n,):
                raise ValueError(f"{self.name}: {field} must have shape ({n},), got {array.shape}")
        if not 0 < self.n_train < n:
            raise ValueError(f"{self.name}: n_train must be in (0, {n}), got {self.n_train}")
        if np.any((self.actions < 0) | (self.actions >= self.n_arms)):
            raise ValueError(f"{self.name}: actions must be in [0, {self.n_arms})")
        if np.any((self.propensities <= 0.0) | (self.propensities > 1.0)):
            raise ValueError(f"{self.name}: propensities must be in (0, 1]")
        _check_rewards(self.name, self.rewards, self.reward_range)

    @property
    def n_rounds(self) -> int:
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])


def _check_features(name: str, X: FloatArray) -> None:
    if X.ndim != 2 or X.shape[0] == 0 or not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: X must be a non-empty finite (rounds, features) array")


def _check_rewards(name: str, rewards: FloatArray, reward_range: tuple[float, float]) -> None:
    low, high = reward_range
    if not low < high:
        raise ValueError(f"{name}: reward_range must have low < high, got {reward_range}")
    if np.any((rewards < low) | (rewards > high)):
        raise ValueError(f"{name}: rewards outside the declared range {reward_range}")


# -- helpers ------------------------------------------------------------------------------


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _passes(n_rows: int, rounds: int, rng: np.random.Generator) -> IntArray:
    """Row order of ``rounds`` rounds: fresh shuffles of all rows, one after another."""
    passes = -(-rounds // n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(passes)])[:rounds]


def _labels(y: npt.ArrayLike) -> tuple[IntArray, int]:
    _, codes = np.unique(np.asarray(y), return_inverse=True)
    codes = codes.astype(np.intp)
    return codes, int(codes.max()) + 1


def _one_hot(labels: IntArray, n_arms: int) -> FloatArray:
    hot: FloatArray = (labels[:, None] == np.arange(n_arms)[None, :]).astype(np.float64)
    return hot


def _classification(
    name: str, X: FloatArray, y: npt.ArrayLike, seed: int, rounds: int, description: str
) -> Stream:
    labels, n_arms = _labels(y)
    order = _passes(X.shape[0], rounds, _rng(name, seed))
    return Stream(
        name=name,
        X=np.ascontiguousarray(X[order], dtype=np.float64),
        rewards=_one_hot(labels[order], n_arms),
        reward_range=(0.0, 1.0),
        description=description,
    )


@functools.cache
def _sklearn(loader: str) -> tuple[FloatArray, IntArray]:
    bunch = getattr(sk_datasets, loader)()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.intp)


@functools.cache
def _river(dataset: str) -> tuple[FloatArray, tuple[str, ...]]:
    """A data set bundled in River's wheel, as (X, labels); the feature order is the file's."""
    from river import datasets as river_datasets

    rows = list(getattr(river_datasets, dataset)())
    names = list(rows[0][0])
    X = np.array([[float(x[k]) for k in names] for x, _ in rows], dtype=np.float64)
    return X, tuple(str(y) for _, y in rows)


# -- the streams --------------------------------------------------------------------------


def iris(seed: int, rounds: int) -> Stream:
    X, y = _sklearn("load_iris")
    return _classification("iris", X, y, seed, rounds, "sklearn iris: 3 species, 4 measures (cm)")


def wine(seed: int, rounds: int) -> Stream:
    X, y = _sklearn("load_wine")
    return _classification("wine", X, y, seed, rounds, "sklearn wine: 3 cultivars, 13 assays")


def breast_cancer(seed: int, rounds: int) -> Stream:
    X, y = _sklearn("load_breast_cancer")
    return _classification(
        "breast_cancer", X, y, seed, rounds, "sklearn breast cancer: 2 classes, 30 measures"
    )


def digits(seed: int, rounds: int) -> Stream:
    X, y = _sklearn("load_digits")
    return _classification("digits", X, y, seed, rounds, "sklearn digits: 10 digits, 8×8 pixels")


def phishing(seed: int, rounds: int) -> Stream:
    X, y = _river("Phishing")
    return _classification("phishing", X, y, seed, rounds, "River Phishing: 2 classes, 9 features")


def bananas(seed: int, rounds: int) -> Stream:
    X, y = _river("Bananas")
    return _classification("bananas", X, y, seed, rounds, "River Bananas: 2 classes, 2 features")


def image_segments(seed: int, rounds: int) -> Stream:
    X, y = _river("ImageSegments")
    return _classification(
        "image_segments", X, y, seed, rounds, "River ImageSegments: 7 classes, 18 features"
    )


def many_arms(seed: int, rounds: int) -> Stream:
    X, y = sk_datasets.make_classification(
        n_samples=rounds,
        n_features=30,
        n_informative=20,
        n_redundant=5,
        n_classes=20,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return _classification(
        "many_arms", X, y, seed, rounds, "make_classification: 20 classes, 30 features"
    )


def drift(seed: int, rounds: int) -> Stream:
    X, y = sk_datasets.make_classification(
        n_samples=rounds,
        n_features=10,
        n_informative=5,
        n_redundant=2,
        n_classes=4,
        n_clusters_per_class=1,
        random_state=seed,
    )
    labels, n_arms = _labels(y)
    half = rounds // 2
    # From the middle on, class c is rewarded on arm c + 1 (mod 4).
    labels[half:] = (labels[half:] + 1) % n_arms
    return Stream(
        name="drift",
        X=np.ascontiguousarray(X, dtype=np.float64),
        rewards=_one_hot(labels, n_arms),
        reward_range=(0.0, 1.0),
        description="make_classification, 4 classes; the label → arm mapping rotates halfway",
    )


def cost_router(seed: int, rounds: int) -> Stream:
    X, y = _sklearn("load_digits")
    rng = _rng("cost_router", seed)
    shuffled = rng.permutation(X.shape[0])
    train, serve = shuffled[: X.shape[0] // 2], shuffled[X.shape[0] // 2 :]
    correct = np.empty((serve.size, len(ROUTER_COMPONENTS)))
    for m, k in enumerate(ROUTER_COMPONENTS):
        steps: list[object] = [StandardScaler()]
        if k < X.shape[1]:
            steps.append(PCA(n_components=k, random_state=seed))
        steps.append(LogisticRegression(max_iter=2_000))
        model = make_pipeline(*steps)
        model.fit(X[train], y[train])
        correct[:, m] = model.predict(X[serve]) == y[serve]
    costs = np.array(ROUTER_COMPONENTS, dtype=np.float64) / X.shape[1]
    order = _passes(serve.size, rounds, rng)
    return Stream(
        name="cost_router",
        X=np.ascontiguousarray(X[serve][order]),
        rewards=correct[order] - ROUTER_LAMBDA * costs[None, :],
        reward_range=(-ROUTER_LAMBDA * float(costs.max()), 1.0),
        description=(
            f"digits routed to 4 models (PCA {ROUTER_COMPONENTS}); "
            f"reward = right − {ROUTER_LAMBDA}·cost"
        ),
    )


def open_bandit(seed: int, rounds: int) -> LoggedStream:
    log = obd.load_campaign("random", OBD_CAMPAIGN)
    n = min(log.n_rounds, 2 * rounds)
    rows = _rng("obd", seed).permutation(log.n_rounds)[:n]
    return LoggedStream(
        name="obd",
        X=np.ascontiguousarray(log.context[rows], dtype=np.float64),
        actions=log.actions[rows].astype(np.intp),
        rewards=np.asarray(log.rewards[rows], dtype=np.float64),
        propensities=np.asarray(log.propensities[rows], dtype=np.float64),
        n_arms=log.n_actions,
        n_train=n // 2,
        reward_range=(0.0, 1.0),
        description=f"Open Bandit Dataset, {OBD_CAMPAIGN} campaign, uniform logging, click",
    )


#: The streams by name, in the order of the report.
STREAMS: dict[str, Callable[[int, int], Stream | LoggedStream]] = {
    "iris": iris,
    "wine": wine,
    "breast_cancer": breast_cancer,
    "digits": digits,
    "phishing": phishing,
    "bananas": bananas,
    "image_segments": image_segments,
    "many_arms": many_arms,
    "drift": drift,
    "cost_router": cost_router,
    "obd": open_bandit,
}
#: The streams that need River installed.
RIVER_STREAMS = frozenset({"phishing", "bananas", "image_segments"})
