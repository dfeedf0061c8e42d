"""The Open Bandit Dataset sample: ZOZOTOWN's logged recommendations, as arrays.

Saito, Aihara, Matsutani, Narita, "Open Bandit Dataset and Pipeline: Towards
Realistic and Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and
Benchmarks (arXiv 2008.07146); data licence CC BY 4.0.

The sample has two logging policies (``random``: uniform over the items;
``bts``: Bernoulli Thompson sampling) and three campaigns (``all``: 80 items,
``men``: 34, ``women``: 46), 10,000 rounds each, three slots (positions) per
recommendation.  The files are found at :data:`ENV_VAR` if set, else at the
first existing of ``<repo>/../shared/data/obd`` and ``/work/shared/data/obd``.

Preprocessing follows obp 0.5.7's ``OpenBanditDataset`` so that estimates are
comparable with it: rounds in timestamp order, positions 0-based (the file's
1, 2, 3 become 0, 1, 2), the reward is the click, and the context is the
one-hot encoding of the four hashed user features with each feature's first
category (in sorted order) dropped.  Unlike obp, the context also carries the
80 (34, 46) user-item affinity columns; :attr:`ObdLog.context_names` says which
column is which.

Reading a campaign file takes about 0.1 s: numeric columns go through
:func:`numpy.loadtxt`, no pandas.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from paramloop.core.ope import LoggedBandit
from paramloop.errors import ConfigError, InputError

#: Environment variable holding the directory of the dataset (with ``random/`` and ``bts/``).
ENV_VAR = "PARAMLOOP_OBD_PATH"
#: Where the dataset is looked for when :data:`ENV_VAR` is not set, after ``<repo>/../shared/data/obd``.
FALLBACK_PATH = Path("/work/shared/data/obd")
#: The reference results computed with obp 0.5.7 (see the dataset's README).
REFERENCE_FILE = "obp_reference.json"

Behavior = Literal["random", "bts"]
Campaign = Literal["all", "men", "women"]
BEHAVIORS: tuple[Behavior, ...] = ("random", "bts")
CAMPAIGNS: tuple[Campaign, ...] = ("all", "men", "women")
#: Number of slots of every recommendation.
LEN_LIST = 3

_NUMERIC = ("item_id", "position", "click", "propensity_score")
_USER_FEATURES = tuple(f"user_feature_{j}" for j in range(4))
_AFFINITY = "user-item_affinity_"
_SHOWN_ROWS = 5


@dataclass(frozen=True, slots=True, eq=False)
class ObdLog:
    """One campaign's logged rounds under one logging policy; every array is read-only.

    ``rewards`` (clicks, 0.0 or 1.0), ``actions`` (item ids in ``[0, n_actions)``),
    ``positions`` (slots in ``[0, len_list)``) and ``propensities`` (the logging
    policy's probability of the item in that slot) have one entry per round;
    ``context`` is ``(n_rounds, len(context_names))``.
    """

    behavior: Behavior
    campaign: Campaign
    rewards: np.ndarray
    actions: np.ndarray
    positions: np.ndarray
    propensities: np.ndarray
    context: np.ndarray
    context_names: tuple[str, ...]
    n_actions: int
    len_list: int

    @property
    def n_rounds(self) -> int:
        """Number of logged rounds."""
        return int(self.rewards.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class ObdReference:
    """What obp 0.5.7 computed for one campaign (``obp_reference.json``).

    ``bts_action_dist_by_position[item, position]`` is the BTS policy's
    probability of showing ``item`` in ``position`` (each column sums to 1; the
    same for every round).  ``obp_estimates`` holds obp's IPS (``"ipw"``) and
    SNIPS (``"snipw"``) estimates of the BTS policy's value from the ``random``
    logs; ``on_policy_ground_truth_bts`` is the click rate of the ``bts`` logs.
    """

    campaign: Campaign
    n_rounds_random: int
    n_actions: int
    len_list: int
    bts_action_dist_by_position: np.ndarray
    obp_estimates: Mapping[str, float]
    on_policy_ground_truth_bts: float
    random_mean_reward: float


def data_path() -> Path:
    """The dataset directory: :data:`ENV_VAR`, else the first default location that exists.

    Raises :class:`~paramloop.errors.ConfigError` (field ``PARAMLOOP_OBD_PATH``)
    when the variable names a missing directory or no default location exists.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = Path(configured)
        if not path.is_dir():
            raise ConfigError(ENV_VAR, f"{configured!r} is not a directory")
        return path
    candidates = [root.parent / "shared" / "data" / "obd" for root in _repo_roots()]
    candidates.append(FALLBACK_PATH)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        ENV_VAR,
        f"not set, and the Open Bandit Dataset is not at {tried}; "
        "set it to the directory holding random/ and bts/",
    )


def load_campaign(behavior: Behavior, campaign: Campaign, *, path: Path | None = None) -> ObdLog:
    """Read ``<path>/<behavior>/<campaign>/<campaign>.csv`` (``path`` defaults to :func:`data_path`).

    Raises :class:`~paramloop.errors.InputError` for an unknown ``behavior`` or
    ``campaign``, :class:`~paramloop.errors.ConfigError` when a file is missing,
    and :class:`~paramloop.errors.InputError` naming the file, column and lines
    when a value is malformed or out of range.
    """
    if behavior not in BEHAVIORS:
        raise InputError("behavior", f"must be one of {', '.join(BEHAVIORS)}, got {behavior!r}")
    if campaign not in CAMPAIGNS:
        raise InputError("campaign", f"must be one of {', '.join(CAMPAIGNS)}, got {campaign!r}")
    folder = (path if path is not None else data_path()) / behavior / campaign
    n_actions = _count_items(folder / "item_context.csv")
    file = folder / f"{campaign}.csv"
    lines = _read_lines(file)
    header = lines[0].split(",")
    affinity = [f"{_AFFINITY}{k}" for k in range(n_actions)]
    column = _column_index(file, header, [*_NUMERIC, "timestamp", *_USER_FEATURES, *affinity])
    body = lines[1:]
    if not body:
        raise InputError(str(file), "has a header but no rounds")
    numeric_columns = [column[name] for name in (*_NUMERIC, *affinity)]
    numbers = _loadtxt(file, body, numeric_columns, np.float64)
    text = _loadtxt(file, body, [column[name] for name in ("timestamp", *_USER_FEATURES)], str)
    line_of = np.arange(len(body)) + 2  # file line of each round, for errors
    timestamps = text[:, 0]
    if np.any(timestamps[1:] < timestamps[:-1]):  # obp sorts by time; the published files are
        order = np.argsort(timestamps, kind="stable")
        numbers, text, line_of = numbers[order], text[order], line_of[order]

    item, position, click, propensity = (numbers[:, j] for j in range(4))
    _require(
        file,
        "item_id",
        line_of,
        (item == np.round(item)) & (item >= 0) & (item < n_actions),
        f"must be an integer in [0, {n_actions}) (item_context.csv lists {n_actions} items)",
    )
    _require(
        file,
        "position",
        line_of,
        np.isin(position, np.arange(1, LEN_LIST + 1)),
        f"must be one of 1..{LEN_LIST}",
    )
    _require(file, "click", line_of, (click == 0.0) | (click == 1.0), "must be 0 or 1")
    _require(
        file,
        "propensity_score",
        line_of,
        (propensity > 0.0) & (propensity <= 1.0),
        "must lie in (0, 1]",
    )
    affinities = numbers[:, 4:]
    _require(
        file, _AFFINITY + "*", line_of, np.all(np.isfinite(affinities), axis=1), "must be finite"
    )

    onehots: list[np.ndarray] = []
    names: list[str] = []
    for j, feature in enumerate(_USER_FEATURES):
        categories, codes = np.unique(text[:, j + 1], return_inverse=True)
        # One column per category but the first (sorted), as pandas.get_dummies(drop_first=True).
        onehots.append(
            (codes[:, None] == np.arange(1, categories.size)[None, :]).astype(np.float64)
        )
        names.extend(f"{feature}={category}" for category in categories[1:])
    names.extend(affinity)
    return ObdLog(
        behavior=behavior,
        campaign=campaign,
        rewards=_frozen(click),
        actions=_frozen(item.astype(np.int64)),
        positions=_frozen(position.astype(np.int64) - 1),
        propensities=_frozen(propensity),
        context=_frozen(np.hstack([*onehots, affinities])),
        context_names=tuple(names),
        n_actions=n_actions,
        len_list=LEN_LIST,
    )


def load_reference(*, path: Path | None = None) -> dict[Campaign, ObdReference]:
    """The obp 0.5.7 reference results for every campaign, from ``obp_reference.json``.

    Raises :class:`~paramloop.errors.ConfigError` when the file is missing or a
    field is absent or has the wrong shape (the message names the field).
    """
    file = (path if path is not None else data_path()) / REFERENCE_FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(str(file), "the obp reference file is missing") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(file), f"is not valid JSON: {exc}") from None
    campaigns = _field(file, raw, "campaigns", dict)
    out: dict[Campaign, ObdReference] = {}
    for campaign in CAMPAIGNS:
        entry = _field(file, campaigns, campaign, dict, prefix="campaigns.")
        where = f"campaigns.{campaign}."
        n_actions = _field(file, entry, "n_actions", int, prefix=where)
        len_list = _field(file, entry, "len_list", int, prefix=where)
        dist = np.asarray(
            _field(file, entry, "bts_action_dist_by_position", list, prefix=where), dtype=np.float64
        )
        if dist.shape != (n_actions, len_list):
            raise ConfigError(
                f"{file}: {where}bts_action_dist_by_position",
                f"must have shape ({n_actions}, {len_list}) (n_actions, len_list), got {dist.shape}",
            )
        estimates = _field(file, entry, "obp_estimates", dict, prefix=where)
        out[campaign] = ObdReference(
            campaign=campaign,
            n_rounds_random=_field(file, entry, "n_rounds_random", int, prefix=where),
            n_actions=n_actions,
            len_list=len_list,
            bts_action_dist_by_position=_frozen(dist),
            obp_estimates=MappingProxyType(
                {
                    name: float(
                        _field(file, estimates, name, float, prefix=f"{where}obp_estimates.")
                    )
                    for name in ("ipw", "snipw")
                }
            ),
            on_policy_ground_truth_bts=float(
                _field(file, entry, "on_policy_ground_truth_bts", float, prefix=where)
            ),
            random_mean_reward=float(
                _field(file, entry, "random_mean_reward", float, prefix=where)
            ),
        )
    return out


def to_logged_bandit(log: ObdLog, action_dist_by_position: np.ndarray) -> LoggedBandit:
    """The logged bandit whose target in round ``i`` is the distribution of round ``i``'s slot.

    ``action_dist_by_position`` is ``(n_actions, len_list)`` (obp's layout:
    item × position); round ``i``'s target row is ``action_dist_by_position[:, positions[i]]``,
    so an estimate averages over rounds with each round's position taken from
    the log — obp's convention for this dataset.  For ``random`` logs the
    logging distribution (uniform over the items) is passed on too.

    Raises :class:`~paramloop.errors.InputError` when the shape does not match
    the log or a position's column is not a distribution (entries in [0, 1]
    summing to 1 within 1e-9).
    """
    dist = np.asarray(action_dist_by_position, dtype=np.float64)
    if dist.shape != (log.n_actions, log.len_list):
        raise InputError(
            "action_dist_by_position",
            f"must have shape ({log.n_actions}, {log.len_list}) (items × positions of the "
            f"{log.campaign} campaign), got {dist.shape}",
        )
    if not np.all(np.isfinite(dist)) or np.any((dist < 0.0) | (dist > 1.0)):
        raise InputError("action_dist_by_position", "entries must be probabilities in [0, 1]")
    sums = dist.sum(axis=0)
    off = np.flatnonzero(np.abs(sums - 1.0) > 1e-9)
    if off.size:
        raise InputError(
            "action_dist_by_position",
            f"each position's column must sum to 1; positions {off.tolist()} sum to "
            f"{sums[off].tolist()}",
        )
    target = dist.T[log.positions]
    logging = (
        np.full((log.n_rounds, log.n_actions), 1.0 / log.n_actions)
        if log.behavior == "random"
        else None
    )
    return LoggedBandit(
        rewards=log.rewards,
        actions=log.actions,
        propensities=log.propensities,
        target=target,
        logging=logging,
    )


def outcome_features(log: ObdLog) -> np.ndarray:
    """Context features for the outcome model: the context plus the round's slot, one-hot.

    The click rate differs by slot, and the target is evaluated at the logged
    slot, so the slot belongs in the outcome model's context (first slot
    dropped, like the user features).
    """
    slots = (log.positions[:, None] == np.arange(1, log.len_list)[None, :]).astype(np.float64)
    return np.hstack([log.context, slots])


def _repo_roots() -> list[Path]:
    here = Path(__file__).resolve()
    return [parent for parent in here.parents if (parent / "pyproject.toml").is_file()][:1]


def _count_items(file: Path) -> int:
    lines = _read_lines(file)
    header = lines[0].split(",")
    if "item_id" not in header:
        raise InputError(str(file), "has no item_id column")
    index = header.index("item_id")
    items = _loadtxt(file, lines[1:], [index], np.int64)[:, 0]
    if not np.array_equal(np.sort(items), np.arange(items.size)):
        raise InputError(f"{file}: item_id", f"must list items 0..{items.size - 1} once each")
    return int(items.size)


def _read_lines(file: Path) -> list[str]:
    try:
        lines = file.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(
            str(file), f"missing from the Open Bandit Dataset (is {ENV_VAR} right?)"
        ) from None
    if not lines:
        raise InputError(str(file), "is empty")
    return lines


def _column_index(file: Path, header: list[str], names: list[str]) -> dict[str, int]:
    missing = [name for name in names if name not in header]
    if missing:
        raise InputError(str(file), f"lacks the columns {', '.join(missing[:_SHOWN_ROWS])}")
    return {name: header.index(name) for name in names}


def _loadtxt(file: Path, lines: list[str], columns: list[int], dtype: Any) -> np.ndarray:
    try:
        values = np.loadtxt(lines, delimiter=",", usecols=columns, dtype=dtype, ndmin=2)
    except ValueError as exc:
        # loadtxt counts lines from the first line it was given: line 1 here is file line 2.
        raise InputError(str(file), f"malformed value ({exc}); file line = that line + 1") from None
    return np.asarray(values)


def _require(file: Path, column: str, line_of: np.ndarray, ok: np.ndarray, problem: str) -> None:
    bad = np.flatnonzero(~ok)
    if bad.size:
        lines = ", ".join(str(int(line)) for line in line_of[bad[:_SHOWN_ROWS]])
        more = f" (and {bad.size - _SHOWN_ROWS} more)" if bad.size > _SHOWN_ROWS else ""
        raise InputError(f"{file}: column {column}", f"{problem}; lines {lines}{more} are not")


def _field(file: Path, mapping: Any, name: str, kind: type, *, prefix: str = "") -> Any:
    if not isinstance(mapping, dict) or name not in mapping:
        raise ConfigError(f"{file}: {prefix}{name}", "is missing")
    value = mapping[name]
    ok = (
        isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float
        else (isinstance(value, kind) and not isinstance(value, bool))
    )
    if not ok:
        raise ConfigError(f"{file}: {prefix}{name}", f"must be a {kind.__name__}, got {value!r}")
    return value


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(array)
    out.setflags(write=False)
    return out
