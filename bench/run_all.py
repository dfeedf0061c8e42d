"""Run every benchmark and rewrite docs/performance.md with the figures measured now.

    python bench/run_all.py [--quick] [--only bench_service,bench_startup]

Each script runs in its own process with ``--json``; its ``table()`` renders the
results.  ``--quick`` shortens every run (for checking the scripts, not for figures);
``--only`` runs the scripts named and keeps the page's other sections as they are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
DOCS = HERE.parent / "docs" / "performance.md"

#: script -> (arguments for the full run, arguments for --quick, section title, what it measures)
BENCHES: dict[str, tuple[list[str], list[str], str, str]] = {
    "bench_recommend": (
        ["--calls", "5000"],
        ["--calls", "300", "--policies", "linucb"],
        "(a) recommend latency",
        "`Optimizer.recommend` end to end (validate + featurize + fingerprint the context, feasibility mask, "
        "score, exploration floor, sample, exact propensity and confidence, log to the in-memory store) and the "
        "core `decide` call alone, for 16 context features. Vowpal Wabbit's `predict` on a pre-built text example "
        "of the same shape is timed in the same run.",
    ),
    "bench_throughput": (
        ["--rounds", "20000"],
        ["--rounds", "500"],
        "(b) loop throughput",
        "Decide + learn rounds per second through the `Optimizer` (8 arms × 16 features, LinUCB): in memory, "
        "and with every decision and outcome committed to a SQLite file before the call returns.",
    ),
    "bench_regret": (
        [],
        ["--rounds", "500", "--seeds", "1", "--task-types", "summarization"],
        "(c) regret against Vowpal Wabbit and MABWiser",
        "Cumulative expected regret on identical simulated streams (same contexts, same feasible arms, same "
        "noise), from the simulator's exact oracle.",
    ),
    "bench_obd": (
        [],
        ["--resamples", "1000", "--repeats", "1"],
        "(e) offline evaluation on the Open Bandit Dataset",
        "The standard OBD experiment on the sample in `../shared/data/obd`: the Bernoulli-TS policy's value "
        "from the uniform-random logs, six estimators with 10,000-resample bootstrap intervals, outcome model "
        "included; IPS and SNIPS match obp 0.5.7's published values.",
    ),
    "bench_ope_scale": (
        [],
        ["--rows", "20000", "--repeats", "1"],
        "(f) offline evaluation of a million logged decisions in SQLite",
        "The simulator's summarization task (297 arms, 55 feasible, 17 context features) served by LinUCB "
        "for 1,000,000 rounds, logged to a SQLite file; in a fresh process: stream the rows, featurize, score "
        "the latest snapshot and the baseline, fit the cross-fitted outcome model, IPS, SNIPS and DR with 95 % "
        "CLT intervals and paired differences. Peak RSS is the evaluating process's.",
    ),
    "bench_memory": (
        [],
        ["--task-types", "20"],
        "(d) memory per task type",
        "Policy state = the snapshot bytes a policy stores; RSS measured in a fresh process.",
    ),
    "bench_service": (
        [],
        ["--seconds", "2", "--calls", "300"],
        "(g) the HTTP service",
        "`POST /v1/recommend` (SQLite store, durable, API-key auth, JSON request logs) against a bare "
        "FastAPI JSON endpoint in the same run, each under uvicorn (1 worker, h11) in a subprocess, driven "
        "by an asyncio HTTP/1.1 client on loopback; then the proxy's overhead over a stub OpenAI-compatible "
        "upstream that answers at once (direct vs through the proxy, one request at a time).",
    ),
    "bench_startup": (
        [],
        ["--decisions", "40000", "--repeat", "1"],
        "(j) service start-up on a long rollout phase",
        "`create_app` as `paramloop serve` calls it, in a fresh process, on a SQLite log of 1,000,000 "
        "decisions of the current canary phase: with the SLO monitor's snapshot (read it and the log "
        "after it) and without (replay the phase). A policy snapshot exists before every timed start.",
    ),
    "bench_soak": (
        [],
        ["--minutes", "1.5", "--warmup", "1"],
        "(k) soak: half an hour at 200 decisions/s",
        "`paramloop serve` (SQLite, durable, API-key auth, JSON logs) for 30 minutes at 200 decisions/s, "
        "each followed by its outcome, from an open-loop generator: failures, recommend p50/p99 and the "
        "server's RSS per minute; RSS from the end of a 5-minute warm-up to the end.",
    ),
    "bench_streams": (
        [],
        ["--quick"],
        "(h) public bandit streams",
        "paramloop's default policy, through its public API, against Vowpal Wabbit squarecb and "
        "epsilon-greedy, a per-arm numpy LinUCB (alpha 1) and a greedy ridge on eleven public streams "
        "that are not our simulator, five seeds each, paired differences with 95 % t-intervals.",
    ),
    "bench_label_arms": (
        ["--rounds", "5000"],
        ["--rounds", "300"],
        "(i) decide + learn at 10 label arms x 64 numeric features",
        "`recommend` + `record_outcome` in memory on a task type whose arms are 10 labels (per-arm "
        "ridge models) and whose context is 64 numbers in their natural scale; and the core alone.",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated script names")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a folder of <script>.json results from earlier runs: render those, run the rest",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sections = []
    kept = _kept_sections()
    with tempfile.TemporaryDirectory() as tmp:
        for script, (full, quick, title, what) in BENCHES.items():
            if args.only and script not in args.only.split(","):
                if _label(title) in kept:  # not run now: the page keeps its figures
                    sections.append(kept[_label(title)])
                continue
            out = Path(tmp) / f"{script}.json"
            command = [
                sys.executable,
                str(HERE / f"{script}.py"),
                *(quick if args.quick else full),
                "--json",
                str(out),
            ]
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True)
            module = importlib.import_module(script)
            results = json.loads(out.read_text())
            shown = " ".join(["python", f"bench/{script}.py", *(quick if args.quick else full)])
            today = dt.date.today().isoformat()
            sections.append(
                f"## {title}\n\n{what}\n\n`{shown}` (measured {today})\n\n{module.table(results)}\n"
            )
    header = (
        "# Performance\n\n"
        f"Measured on {platform.machine()} with {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, by `python bench/run_all.py` (each section says when)"
        + (" --quick (short runs: not figures to quote)" if args.quick else "")
        + ". Each script prints its own figures; this page is rewritten from them.\n\n"
        "Targets (from the issue): recommend p99 ≤ 50 µs for 8 arms × 16 features and ≤ 250 µs for 256 arms; "
        "≥ 20,000 decide+learn rounds/s in memory and ≥ 5,000/s with durable SQLite logging; regret over "
        "50,000 rounds ≤ Vowpal Wabbit squarecb's; policy state ≤ 50 KB per task type (64 arms × 16 features) "
        "and ≤ 200 MB RSS for 1,000 task types; the full OBD evaluation ≤ 2.5 s; 1,000,000 logged decisions in "
        "SQLite → IPS, SNIPS and DR with intervals ≤ 10 s with bounded memory.\n\n"
    )
    DOCS.write_text(header + _kept_summary() + "\n".join(sections))
    print(f"wrote {DOCS}")


SUMMARY_START, SUMMARY_END = "<!-- summary -->", "<!-- /summary -->"


def _kept_sections() -> dict[str, str]:
    """The current page's ``## (x) title`` sections by label ``(x)`` (what ``--only`` keeps)."""
    if not DOCS.exists():
        return {}
    text = DOCS.read_text()
    end = text.find(SUMMARY_END)
    body = text[end + len(SUMMARY_END) :] if end >= 0 else text
    sections: dict[str, str] = {}
    for chunk in ("\n" + body).split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0].strip()
        sections[_label(title)] = "## " + chunk.rstrip("\n") + "\n"
    return sections


def _label(title: str) -> str:
    return title.split(" ", 1)[0]


def _kept_summary() -> str:
    """The hand-written summary block of the current page (between the markers), kept as it is.

    It reads the figures against the targets; update it when the figures move.
    """
    if not DOCS.exists():
        return ""
    text = DOCS.read_text()
    start, end = text.find(SUMMARY_START), text.find(SUMMARY_END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(SUMMARY_END)] + "\n\n"


if __name__ == "__main__":
    main()
