"""The Open Bandit Dataset: the loader, and the standard experiment against obp 0.5.7.

The standard experiment estimates the Bernoulli-TS policy's value from the
uniform-random logs, with the BTS action distribution of ``obp_reference.json``
(round i's target is the distribution of its logged slot).  IPS and SNIPS must
equal obp's published-package values to 1e-9; every estimator gets a 95 %
bootstrap interval (10,000 resamples) and is compared with the on-policy
ground truth (the click rate of the BTS logs).

What is asserted about the ground truth, and why: IPS, SNIPS, DR and SNDR are
unbiased or consistent with the exact propensities of a uniform logger, and
their intervals cover the truth in all three campaigns.  DM and Switch-DR are
not asserted to: their intervals resample rows around one fitted outcome
model, so they show sampling noise but not the model's bias (DM's interval
misses the truth in every campaign, Switch-DR's in two).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from paramloop.core.ope import DM, DR, IPS, SNDR, SNIPS, Estimate, SwitchDR, estimate_all
from paramloop.datasets import obd
from paramloop.engine.outcome_model import fit_predict
from paramloop.errors import ConfigError, EvaluationError, InputError

RESAMPLES = 10_000
SWITCH_TAU = 2.0
ESTIMATORS = (IPS(), SNIPS(), DM(), DR(), SNDR(), SwitchDR(tau=SWITCH_TAU))
#: Estimators whose 95 % interval covers the on-policy truth in every campaign (module docstring).
COVERING = ("ips", "snips", "dr", "sndr")


@pytest.fixture(scope="module")
def reference() -> dict[obd.Campaign, obd.ObdReference]:
    return obd.load_reference()


@pytest.fixture(scope="module")
def random_logs() -> dict[obd.Campaign, obd.ObdLog]:
    return {c: obd.load_campaign("random", c) for c in obd.CAMPAIGNS}


@pytest.fixture(scope="module")
def experiment(
    reference: dict[obd.Campaign, obd.ObdReference], random_logs: dict[obd.Campaign, obd.ObdLog]
) -> dict[obd.Campaign, dict[str, Estimate]]:
    out: dict[obd.Campaign, dict[str, Estimate]] = {}
    for index, campaign in enumerate(obd.CAMPAIGNS):
        log = random_logs[campaign]
        data = obd.to_logged_bandit(log, reference[campaign].bts_action_dist_by_position)
        predicted = fit_predict(
            obd.outcome_features(log), log.actions, log.rewards, log.n_actions, rng=0
        )
        results = estimate_all(
            data, ESTIMATORS, predicted, rng=np.random.default_rng([0, index]), resamples=RESAMPLES
        )
        out[campaign] = {e.estimator.split("(")[0]: e for e in results}
    return out


# --- the loader -------------------------------------------------------------------------


@pytest.mark.parametrize("behavior", obd.BEHAVIORS)
@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
def test_a_campaign_loads_as_typed_read_only_arrays(
    behavior: obd.Behavior,
    campaign: obd.Campaign,
    reference: dict[obd.Campaign, obd.ObdReference],
) -> None:
    log = obd.load_campaign(behavior, campaign)
    ref = reference[campaign]
    assert (log.behavior, log.campaign) == (behavior, campaign)
    assert log.n_rounds == ref.n_rounds_random == 10_000
    assert (log.n_actions, log.len_list) == (ref.n_actions, ref.len_list)
    assert log.actions.dtype == np.int64 and log.positions.dtype == np.int64
    assert set(np.unique(log.positions).tolist()) == {0, 1, 2}
    assert log.actions.min() >= 0 and log.actions.max() < log.n_actions
    assert set(np.unique(log.rewards).tolist()) == {0.0, 1.0}
    assert np.all((log.propensities > 0) & (log.propensities <= 1))
    assert log.context.shape == (log.n_rounds, len(log.context_names))
    assert sum(name.startswith("user-item_affinity_") for name in log.context_names) == (
        log.n_actions
    )
    for array in (log.rewards, log.actions, log.positions, log.propensities, log.context):
        assert not array.flags.writeable
    if behavior == "random":
        np.testing.assert_array_equal(log.propensities, 1.0 / log.n_actions)


@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
def test_the_ground_truth_is_the_click_rate_of_the_bts_logs(
    campaign: obd.Campaign, reference: dict[obd.Campaign, obd.ObdReference]
) -> None:
    bts = obd.load_campaign("bts", campaign)
    assert bts.rewards.mean() == pytest.approx(
        reference[campaign].on_policy_ground_truth_bts, abs=1e-12
    )


@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
def test_the_bts_distribution_sums_to_one_over_items_in_every_position(
    campaign: obd.Campaign, reference: dict[obd.Campaign, obd.ObdReference]
) -> None:
    dist = reference[campaign].bts_action_dist_by_position
    np.testing.assert_allclose(dist.sum(axis=0), 1.0, atol=1e-9)


def test_each_round_targets_the_distribution_of_its_own_slot(
    reference: dict[obd.Campaign, obd.ObdReference], random_logs: dict[obd.Campaign, obd.ObdLog]
) -> None:
    log, dist = random_logs["men"], reference["men"].bts_action_dist_by_position
    data = obd.to_logged_bandit(log, dist)
    for i in (0, 1, 2, 5_000, 9_999):
        np.testing.assert_array_equal(data.target[i], dist[:, log.positions[i]])
    assert data.logging is not None  # uniform logger: its full distribution is known


# --- the standard experiment ----------------------------------------------------------------


@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
@pytest.mark.parametrize(("ours", "theirs"), [("ips", "ipw"), ("snips", "snipw")])
def test_ips_and_snips_equal_obp_to_1e_9(
    campaign: obd.Campaign,
    ours: str,
    theirs: str,
    reference: dict[obd.Campaign, obd.ObdReference],
    experiment: dict[obd.Campaign, dict[str, Estimate]],
) -> None:
    value = experiment[campaign][ours].value
    assert value is not None
    assert abs(value - reference[campaign].obp_estimates[theirs]) <= 1e-9


@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
def test_every_estimator_gives_a_supported_estimate_inside_its_interval(
    campaign: obd.Campaign, experiment: dict[obd.Campaign, dict[str, Estimate]]
) -> None:
    estimates = experiment[campaign]
    assert sorted(estimates) == sorted(["ips", "snips", "dm", "dr", "sndr", "switch-dr"])
    for e in estimates.values():
        assert e.support == "ok" and e.reason is None
        assert e.value is not None and e.low is not None and e.high is not None
        assert e.low <= e.value <= e.high
        assert e.low >= 0.0 and e.high < 0.05  # click rates: a few per thousand
        assert e.resamples == RESAMPLES
        assert e.support_basis == "logging" and e.unsupported_share == 0.0


@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
def test_the_unbiased_estimators_intervals_cover_the_on_policy_truth(
    campaign: obd.Campaign,
    reference: dict[obd.Campaign, obd.ObdReference],
    experiment: dict[obd.Campaign, dict[str, Estimate]],
) -> None:
    truth = reference[campaign].on_policy_ground_truth_bts
    for name in COVERING:
        e = experiment[campaign][name]
        assert e.low is not None and e.high is not None
        assert e.low <= truth <= e.high, (name, e.low, truth, e.high)


@pytest.mark.parametrize("campaign", obd.CAMPAIGNS)
def test_every_estimate_lies_within_half_the_truth_of_it(
    campaign: obd.Campaign,
    reference: dict[obd.Campaign, obd.ObdReference],
    experiment: dict[obd.Campaign, dict[str, Estimate]],
) -> None:
    """A guard against gross errors, not a coverage claim: the worst relative error here is
    IPS's 0.48 on ``women`` (the truth rests on 46 clicks; DM's is 0.17 there)."""
    truth = reference[campaign].on_policy_ground_truth_bts
    for e in experiment[campaign].values():
        assert e.value is not None
        assert abs(e.value - truth) / truth < 0.5, (e.estimator, e.value, truth)


# --- bad input ------------------------------------------------------------------------------


def test_a_missing_dataset_directory_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(obd.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as info:
        obd.load_campaign("random", "all")
    assert info.value.field == "PARAMLOOP_OBD_PATH"


def test_a_missing_campaign_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"item_context\.csv"):
        obd.load_campaign("random", "men", path=tmp_path)


@pytest.mark.parametrize(
    ("behavior", "campaign", "field"),
    [("greedy", "all", "behavior"), ("random", "kids", "campaign")],
)
def test_unknown_behavior_or_campaign_is_refused(behavior: str, campaign: str, field: str) -> None:
    with pytest.raises(InputError) as info:
        obd.load_campaign(behavior, campaign)  # type: ignore[arg-type]
    assert info.value.field == field


def write_campaign(root: Path, rows: list[str], n_items: int = 2) -> None:
    folder = root / "random" / "all"
    folder.mkdir(parents=True)
    (folder / "item_context.csv").write_text(
        ",item_id,item_feature_0\n" + "".join(f"{i},{i},0.5\n" for i in range(n_items))
    )
    header = (
        ",timestamp,item_id,position,click,propensity_score,"
        + ",".join(f"user_feature_{j}" for j in range(4))
        + ","
        + ",".join(f"user-item_affinity_{k}" for k in range(n_items))
    )
    (folder / "all.csv").write_text("\n".join([header, *rows]) + "\n")


def row(i: int, item: object = 0, position: object = 1, click: object = 0, p: object = 0.5) -> str:
    stamp = f"2019-11-24 00:00:{i:02d}.000000+00:00"
    return f"{i},{stamp},{item},{position},{click},{p},a,b,c,d,0.0,0.0"


def test_a_small_well_formed_file_loads(tmp_path: Path) -> None:
    write_campaign(tmp_path, [row(0, item=1, position=3, click=1), row(1)])
    log = obd.load_campaign("random", "all", path=tmp_path)
    assert log.actions.tolist() == [1, 0]
    assert log.positions.tolist() == [2, 0]
    assert log.rewards.tolist() == [1.0, 0.0]
    assert log.context.shape == (2, 2)  # one category per user feature (dropped) + 2 affinities


def test_rounds_are_put_in_timestamp_order(tmp_path: Path) -> None:
    write_campaign(tmp_path, [row(5, item=1), row(3, item=0)])
    log = obd.load_campaign("random", "all", path=tmp_path)
    assert log.actions.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("bad_row", "column"),
    [
        (row(1, item=2), "item_id"),
        (row(1, item=0.5), "item_id"),
        (row(1, position=4), "position"),
        (row(1, position=0), "position"),
        (row(1, click=2), "click"),
        (row(1, p=0), "propensity_score"),
        (row(1, p=1.5), "propensity_score"),
    ],
)
def test_an_out_of_range_value_is_refused_naming_the_column_and_file_line(
    tmp_path: Path, bad_row: str, column: str
) -> None:
    write_campaign(tmp_path, [row(0), bad_row])
    with pytest.raises(InputError) as info:
        obd.load_campaign("random", "all", path=tmp_path)
    assert info.value.field.endswith(f"column {column}")
    assert "lines 3 " in str(info.value)


def test_a_value_that_is_not_a_number_is_refused_naming_the_file(tmp_path: Path) -> None:
    write_campaign(tmp_path, [row(0), row(1, item="x")])
    with pytest.raises(InputError, match=r"all\.csv"):
        obd.load_campaign("random", "all", path=tmp_path)


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    write_campaign(tmp_path, [row(0)])
    file = tmp_path / "random" / "all" / "all.csv"
    file.write_text(file.read_text().replace("click", "clicked"))
    with pytest.raises(InputError, match="lacks the columns click"):
        obd.load_campaign("random", "all", path=tmp_path)


def test_a_target_of_the_wrong_shape_or_not_summing_to_one_is_refused(
    reference: dict[obd.Campaign, obd.ObdReference], random_logs: dict[obd.Campaign, obd.ObdLog]
) -> None:
    log = random_logs["women"]
    with pytest.raises(InputError, match=r"\(46, 3\)"):
        obd.to_logged_bandit(log, reference["men"].bts_action_dist_by_position)
    dist = reference["women"].bts_action_dist_by_position.copy()
    dist[0, 1] += 0.01
    with pytest.raises(InputError, match="positions \\[1\\]"):
        obd.to_logged_bandit(log, dist)


def test_the_loaded_log_rejects_a_target_the_evaluation_layer_would_reject(
    random_logs: dict[obd.Campaign, obd.ObdLog],
) -> None:
    """A log with a tampered propensity fails in the core's own validation, naming the row."""
    log = random_logs["all"]
    propensities = log.propensities.copy()
    propensities[7] = 0.5
    tampered = obd.ObdLog(
        behavior=log.behavior,
        campaign=log.campaign,
        rewards=log.rewards,
        actions=log.actions,
        positions=log.positions,
        propensities=propensities,
        context=log.context,
        context_names=log.context_names,
        n_actions=log.n_actions,
        len_list=log.len_list,
    )
    dist = np.full((log.n_actions, log.len_list), 1.0 / log.n_actions)
    with pytest.raises(EvaluationError) as info:
        obd.to_logged_bandit(tampered, dist)
    assert info.value.rows == (7,)
