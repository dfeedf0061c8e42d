"""(k) soak: ``paramloop serve`` at a steady rate for half an hour, RSS and p99 per minute.

    python bench/bench_soak.py [--minutes 30] [--rate 200] [--warmup 5] [--database-url URL]

One ``paramloop serve`` process (the command users run: SQLite in a temporary directory
unless ``--database-url``; the spool beside it; API-key auth; JSON request logs at
INFO to /dev/null) and one load generator in this process.  Every ``1/--rate`` seconds,
whatever the answers do, a caller decides (``POST /v1/recommend`` with its own request
id) and reports the outcome (``POST /v1/outcomes``): ``--rate`` decisions and as many
outcomes per second.  Latency is the recommend's, counted from its scheduled time (so
queueing counts).  Every 10 s the server's resident set (``VmRSS`` from /proc) is read.

Per minute it prints decisions, failures, recommend p50/p99 and the RSS at the minute's
end; at the end, the RSS change from the end of the warm-up (``--warmup`` minutes) to
the end (target: within ±10 %), and the worst minute's p99.  This is a benchmark, not
a test: it asserts nothing, it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import markdown_table
from bench_service import Connection, _free_port

KEY = "soak-key"
CONFIG = """
[tasks.qa]
preset = "published"
baseline = {{ model = "small", temperature = 0.4, max_tokens = 256 }}
space = {{ temperature = [0.0, 0.2, 0.4, 0.6, 0.8], max_tokens = [128, 256, 512] }}
trust_region = {{ temperature = 1.0, max_tokens = 400 }}
reward_wait_s = 120
default_reward = 0.0

[service]
database_url = "{database_url}"
log_level = "info"
mode = "general"  # the whole loop (the default, shadow, only logs the policy's choice)

[[service.api_keys]]
name = "soak"
role = "write"
sha256 = "{digest}"
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def soak(port: int, pid: int, rate: float, minutes: float) -> list[dict[str, Any]]:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(128):
        pool.put_nowait(await Connection.open(port))
    rng = np.random.default_rng(0)
    latencies: list[list[float]] = [[] for _ in range(int(np.ceil(minutes)))]
    failures = [0] * len(latencies)
    rss: list[tuple[float, float]] = []
    start = time.perf_counter() + 0.2

    async def one(i: int, due: float) -> None:
        minute = min(int((due - start) / 60), len(latencies) - 1)
        context = {
            "risk_tier": ["low", "medium", "high"][i % 3],
            "prompt_tokens": int(rng.integers(50, 4000)),
        }
        conn = await pool.get()
        try:
            status = await conn.send(
                post(
                    "/v1/recommend", {"task_type": "qa", "request_id": f"s{i}", "context": context}
                )
            )
            latencies[minute].append((time.perf_counter() - due) * 1000)
            if status != 200:
                failures[minute] += 1
                return
            outcome = {"quality": float(rng.uniform(0.4, 1.0)), "latency_ms": 800.0,
                       "prompt_tokens": context["prompt_tokens"], "completion_tokens": 200}  # fmt: skip
            status = await conn.send(
                post("/v1/outcomes", {"request_id": f"s{i}", "outcome": outcome})
            )
            failures[minute] += status != 200
        finally:
            pool.put_nowait(conn)

    async def watch() -> None:
        while True:
            rss.append((time.perf_counter() - start, rss_mb(pid)))
            await asyncio.sleep(10)

    watcher = asyncio.create_task(watch())
    n = int(rate * minutes * 60)
    tasks: set[asyncio.Task[None]] = set()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if i and i % int(rate * 60) == 0:
            m = i // int(rate * 60) - 1
            done = latencies[m]
            print(
                f"minute {m + 1:3d}: {len(done):6d} decisions, {failures[m]} failed, "
                f"p50 {np.percentile(done, 50):6.2f} ms, p99 {np.percentile(done, 99):7.2f} ms, "
                f"RSS {rss[-1][1]:.1f} MB",
                flush=True,
            )
    await asyncio.gather(*tasks)
    watcher.cancel()
    rss.append((time.perf_counter() - start, rss_mb(pid)))
    while not pool.empty():
        pool.get_nowait().close()
    rows = []
    for m, done in enumerate(latencies):
        at_end = [mb for t, mb in rss if t <= (m + 1) * 60]
        rows.append(
            {
                "minute": m + 1,
                "decisions": len(done),
                "failed": failures[m],
                "p50_ms": float(np.percentile(done, 50)) if done else None,
                "p99_ms": float(np.percentile(done, 99)) if done else None,
                "rss_mb": at_end[-1] if at_end else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--database-url")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'soak.db'}"
        config = Path(tmp) / "paramloop.toml"
        config.write_text(
            CONFIG.format(database_url=url, digest=hashlib.sha256(KEY.encode()).hexdigest())
        )
        port = _free_port()
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("paramloop")), "serve", "--config", str(config),
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp, env=os.environ,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    asyncio.run(_probe(port))
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("paramloop serve did not start") from None
                    time.sleep(0.1)
            rows = asyncio.run(soak(port, server.pid, args.rate, args.minutes))
        finally:
            server.terminate()
            server.wait(60)
    warm = [r for r in rows if r["minute"] == int(args.warmup)]
    base = warm[0]["rss_mb"] if warm else rows[0]["rss_mb"]
    result = {
        "rate": args.rate,
        "minutes": args.minutes,
        "warmup": args.warmup,
        "rows": rows,
        "rss_after_warmup_mb": base,
        "rss_end_mb": rows[-1]["rss_mb"],
        "rss_change": rows[-1]["rss_mb"] / base - 1.0,
        "worst_p99_ms": max(r["p99_ms"] for r in rows if r["p99_ms"] is not None),
        "failed": sum(r["failed"] for r in rows),
    }
    print()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


def table(r: dict[str, Any]) -> str:
    per_minute = markdown_table(
        ["minute", "decisions", "failed", "recommend p50 ms", "recommend p99 ms", "server RSS MB"],
        [[str(x["minute"]), str(x["decisions"]), str(x["failed"]), f"{x['p50_ms']:.2f}",
          f"{x['p99_ms']:.2f}", f"{x['rss_mb']:.1f}"] for x in r["rows"]],
    )  # fmt: skip
    summary = (
        f"{r['rate']:.0f} decisions/s (and as many outcomes) for {r['minutes']:g} min: "
        f"{r['failed']} failed; RSS {r['rss_after_warmup_mb']:.1f} MB after {r['warmup']:g} min "
        f"of warm-up, {r['rss_end_mb']:.1f} MB at the end ({r['rss_change']:+.1%}; target ±10 %); "
        f"worst minute's p99 {r['worst_p99_ms']:.1f} ms."
    )
    return f"{summary}\n\n{per_minute}"


if __name__ == "__main__":
    main()
