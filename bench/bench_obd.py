"""(e) the standard Open Bandit Dataset experiment, end to end, against obp 0.5.7's published numbers.

For each campaign (all, men, women): load the uniform-random logs, take the
Bernoulli-TS policy's action distribution from ``obp_reference.json`` (round
i's target is the distribution of its logged slot), fit the outcome model
(logistic regression, 2-fold cross-fitting, context = user features + user-item
affinities + slot) and estimate the BTS policy's value with IPS, SNIPS, DM, DR,
SNDR and Switch-DR, each with a 95 % percentile interval over 10,000 bootstrap
resamples (all six estimators on the same resamples).  The relative error is
against the on-policy ground truth (the click rate of the BTS logs).

Timed: reading the files (logs + reference), the outcome model, the estimates
with their intervals; the figure "without loading" leaves the file reading
out.  Each repeat redoes everything; the median repeat is reported.  The
import of paramloop + scikit-learn is timed separately in a fresh process.

    python bench/bench_obd.py [--resamples 10000] [--repeats 3] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import markdown_table
from paramloop.core.ope import DM, DR, IPS, SNDR, SNIPS, Estimator, SwitchDR, estimate_all
from paramloop.datasets import obd
from paramloop.engine.outcome_model import fit_predict

#: Switch-DR falls back to DM alone in rounds whose weight exceeds this: the target shows the
#: item at least twice as often as the uniform logger does (about 10 % of the rounds here).
SWITCH_TAU = 2.0
#: Our estimator names → the keys of obp's estimates in obp_reference.json.
OBP_NAMES = {"ips": "ipw", "snips": "snipw"}

IMPORTS = (
    "import time; t = time.perf_counter(); "
    "import paramloop.core.ope, paramloop.datasets.obd, paramloop.engine.outcome_model; "
    "print(time.perf_counter() - t)"
)


def estimators() -> tuple[Estimator, ...]:
    return (IPS(), SNIPS(), DM(), DR(), SNDR(), SwitchDR(tau=SWITCH_TAU))


def run_once(resamples: int, seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """One full evaluation of the three campaigns: results and the seconds each stage took."""
    clock = time.perf_counter
    started = clock()
    reference = obd.load_reference()
    logs = {c: obd.load_campaign("random", c) for c in obd.CAMPAIGNS}
    loaded = clock()
    model_s = 0.0
    campaigns: dict[str, Any] = {}
    for index, campaign in enumerate(obd.CAMPAIGNS):
        log, ref = logs[campaign], reference[campaign]
        t = clock()
        data = obd.to_logged_bandit(log, ref.bts_action_dist_by_position)
        predicted = fit_predict(
            obd.outcome_features(log), log.actions, log.rewards, log.n_actions, rng=seed
        )
        model_s += clock() - t
        results = estimate_all(
            data,
            estimators(),
            predicted,
            rng=np.random.default_rng([seed, index]),
            resamples=resamples,
        )
        truth = ref.on_policy_ground_truth_bts
        rows = []
        for e in results:
            if e.value is None or e.low is None or e.high is None:
                raise RuntimeError(f"{campaign}/{e.estimator}: no estimate ({e.reason})")
            obp_name = OBP_NAMES.get(e.estimator)
            obp_value = ref.obp_estimates[obp_name] if obp_name else None
            rows.append(
                {
                    "estimator": e.estimator,
                    "value": e.value,
                    "low": e.low,
                    "high": e.high,
                    "resamples": e.resamples,
                    "relative_error": abs(e.value - truth) / truth,
                    "covers_truth": e.low <= truth <= e.high,
                    "obp": obp_value,
                    "obp_difference": None if obp_value is None else e.value - obp_value,
                }
            )
        campaigns[campaign] = {
            "n_rounds": log.n_rounds,
            "n_actions": log.n_actions,
            "clicks": int(log.rewards.sum()),
            "ground_truth": truth,
            "ess": results[0].ess,
            "max_weight": results[0].max_weight,
            "support": results[0].support,
            "estimates": rows,
        }
    finished = clock()
    timing = {
        "total_s": finished - started,
        "load_s": loaded - started,
        "without_loading_s": finished - loaded,
        "outcome_model_s": model_s,
        "estimates_s": finished - loaded - model_s,
    }
    return campaigns, timing


def import_seconds() -> float:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True
    ).stdout
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    timings = []
    campaigns: dict[str, Any] = {}
    for _ in range(args.repeats):
        campaigns, timing = run_once(args.resamples, args.seed)
        timings.append(timing)
    median = {key: statistics.median(t[key] for t in timings) for key in timings[0]}
    results = {
        "resamples": args.resamples,
        "repeats": args.repeats,
        "seed": args.seed,
        "switch_tau": SWITCH_TAU,
        "outcome_model": "logistic regression (C=1) on arm one-hot + context, 2-fold cross-fitting",
        "timing": median,
        "timing_min": {key: min(t[key] for t in timings) for key in timings[0]},
        "import_s": import_seconds(),
        "campaigns": campaigns,
    }
    print(
        f"full OBD evaluation (3 campaigns x 6 estimators, {args.resamples:,} resamples), "
        f"median of {args.repeats}: {median['total_s']:.2f} s with loading, "
        f"{median['without_loading_s']:.2f} s without (loading {median['load_s']:.2f} s, outcome "
        f"models {median['outcome_model_s']:.2f} s, estimates + intervals {median['estimates_s']:.2f} s); "
        f"imports {results['import_s']:.2f} s",
        flush=True,
    )
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def table(results: dict[str, Any]) -> str:
    t = results["timing"]
    summary = (
        f"Full evaluation, median of {results['repeats']} runs: **{t['total_s']:.2f} s** with data "
        f"loading, **{t['without_loading_s']:.2f} s** without (loading {t['load_s']:.2f} s, outcome "
        f"models {t['outcome_model_s']:.2f} s, estimates with {results['resamples']:,}-resample "
        f"intervals {t['estimates_s']:.2f} s); importing paramloop + scikit-learn takes "
        f"{results['import_s']:.2f} s more.  Switch-DR uses tau = {results['switch_tau']:g}; "
        f"outcome model: {results['outcome_model']}."
    )
    rows = []
    for campaign, c in results["campaigns"].items():
        for r in c["estimates"]:
            rows.append(
                [
                    f"{campaign} (truth {c['ground_truth']:.4f}; {c['clicks']} clicks logged)",
                    r["estimator"],
                    f"{r['value']:.6f}",
                    f"[{r['low']:.6f}, {r['high']:.6f}]",
                    f"{r['relative_error']:.3f}",
                    "yes" if r["covers_truth"] else "no",
                    "-" if r["obp"] is None else f"{r['obp']:.10g}",
                    "-" if r["obp_difference"] is None else f"{r['obp_difference']:.1e}",
                ]
            )
    header = [
        "campaign",
        "estimator",
        "estimate",
        "95% CI",
        "relative error",
        "CI covers truth",
        "obp 0.5.7",
        "ours − obp",
    ]
    return summary + "\n\n" + markdown_table(header, rows)


if __name__ == "__main__":
    main()
