"""(f) the HTTP service: decision API throughput and latency, proxy overhead.

    python bench/bench_service.py [--seconds 8] [--rate 500] [--calls 2000] [--json out.json]

Each app runs under uvicorn in a subprocess (1 worker, the same options for all) on a
loopback port; the load generator is a small asyncio HTTP/1.1 client with keep-alive
connections (a few µs per request, so it is not what is measured).

1. Throughput: ``POST /v1/recommend`` of the paramloop service (SQLite store, every
   decision committed before the answer, API-key auth, JSON request logs) against a bare
   FastAPI JSON endpoint, in the same run: closed loop, 16 connections, ``--seconds`` each.
2. Latency at a fixed rate: open loop at ``--rate`` requests/s (sends on schedule whatever
   the answers do; latency counts from the scheduled send, so queueing is included).
3. Proxy overhead: a stub OpenAI-compatible upstream (answers at once with a fixed reply),
   called directly and through the proxy, one request at a time (``--calls`` each); the
   difference of the p50s is the proxy's overhead (decision, outcome, two SQLite commits,
   forwarding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from _common import markdown_table
from _service_apps import KEY

HERE = Path(__file__).parent
RECOMMEND = json.dumps(
    {
        "task_type": "bench",
        "context": {"risk_tier": "high", "prompt_tokens": 1800, "prior_failures": 1},
    }
).encode()
CHAT = {"model": "small", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def serve(factory: str, env: dict[str, str], workers: int = 1) -> Iterator[int]:
    """Run ``_service_apps:<factory>`` under uvicorn in a subprocess; yield its port."""
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", f"_service_apps:{factory}", "--factory",
        "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{factory} did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request and reads the answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> int:
        status, _ = await self.exchange(raw)
        return status

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send ``raw``; the answer's status and body."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


#: Which worker answers: the status endpoint names its process.
WHO = (
    "GET /api/optimization/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Authorization: Bearer {KEY}\r\n\r\n"
).encode()


async def worker_of(conn: Connection) -> int:
    status, body = await conn.exchange(WHO)
    if status != 200:
        raise RuntimeError(f"status {status} from the status endpoint")
    pid: int = json.loads(body)["replica"]["pid"]
    return pid


async def balanced(
    port: int, workers: int, connections: int, timeout_s: float = 60.0
) -> list[Connection]:
    """``connections`` keep-alive connections, the same number on each of ``workers``
    processes (a connection to a worker that has its share is closed and opened again)."""
    share = -(-connections // workers)
    kept: dict[int, list[Connection]] = {}
    deadline = time.monotonic() + timeout_s
    while sum(len(c) for c in kept.values()) < connections:
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not spread {connections} connections over {workers} workers")
        conn = await Connection.open(port)
        pid = await worker_of(conn)
        if len(kept.setdefault(pid, [])) < share:
            kept[pid].append(conn)
        else:
            conn.close()
    return [conn for conns in kept.values() for conn in conns]


async def all_workers_up(port: int, workers: int, timeout_s: float = 120.0) -> None:
    """Wait until ``workers`` distinct processes have answered: a worker still starting
    accepts no connection, and those opened meanwhile would all go to the others."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers answered")
        conn = await Connection.open(port)
        try:
            seen.add(await worker_of(conn))
        finally:
            conn.close()
        await asyncio.sleep(0.02)


def request(path: str, body: bytes, *, key: str | None = KEY) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def closed_loop(
    port: int,
    raw: bytes,
    seconds: float,
    connections: int = 16,
    spread: list[int] | None = None,
    workers: int = 1,
) -> float:
    """Requests per second with ``connections`` clients each sending back to back; with
    ``spread``, how many of the connections each worker process served is appended to it.

    With ``workers`` > 1 the connections are spread evenly over the worker processes, as
    a load balancer in front of replicas would: uvicorn's workers share one listening
    socket and the kernel hands new connections to whichever accepts first (measured
    here: all 32 to one of two workers, or 22/9/1/0 of four).
    """
    if workers > 1:
        conns = await balanced(port, workers, connections)
    else:
        conns = [await Connection.open(port) for _ in range(connections)]
    for conn in conns:  # warm up
        for _ in range(20):
            assert await conn.send(raw) == 200
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status = await conn.send(raw)
            if status != 200:
                raise RuntimeError(f"status {status}")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    if spread is not None:
        pids = [await worker_of(conn) for conn in conns]
        spread.extend(sorted((pids.count(pid) for pid in set(pids)), reverse=True))
    for conn in conns:
        conn.close()
    return done / elapsed


async def open_loop(port: int, raw: bytes, rate: float, seconds: float) -> np.ndarray:
    """Latencies (ms) at a fixed arrival rate, measured from each request's scheduled time."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await Connection.open(port))
    n = int(rate * seconds)
    latencies = np.empty(n)
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        conn = await pool.get()
        status = await conn.send(raw)
        latencies[i] = (time.perf_counter() - due) * 1000
        errors += status != 200
        pool.put_nowait(conn)

    tasks = []
    start = time.perf_counter() + 0.1
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return latencies


async def sequential(port: int, raw: bytes, calls: int) -> np.ndarray:
    conn = await Connection.open(port)
    for _ in range(50):
        assert await conn.send(raw) == 200
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        status = await conn.send(raw)
        out[i] = (time.perf_counter() - start) * 1000
        if status != 200:
            raise RuntimeError(f"status {status}")
    conn.close()
    return out


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://root@127.0.0.1:5432/test",
        help="the PostgreSQL server of the replica-scaling run ('' to skip it)",
    )
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the scaling run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "calls": args.calls}
    recommend = request("/v1/recommend", RECOMMEND)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"BENCH_DB": str(Path(tmp) / "bench.db")}
        with serve("bare_app", env) as port:
            results["bare_rps"] = asyncio.run(closed_loop(port, recommend, args.seconds))
            bare_latency = asyncio.run(open_loop(port, recommend, args.rate, args.seconds))
        with serve("paramloop_app", env) as port:
            results["recommend_rps"] = asyncio.run(closed_loop(port, recommend, args.seconds))
            latency = asyncio.run(open_loop(port, recommend, args.rate, args.seconds))
        results["ratio"] = results["recommend_rps"] / results["bare_rps"]
        for name, values in (("bare", bare_latency), ("recommend", latency)):
            results[f"{name}_p50_ms"] = _pct(values, 50)
            results[f"{name}_p99_ms"] = _pct(values, 99)
        print(
            f"throughput: recommend {results['recommend_rps']:.0f}/s, bare {results['bare_rps']:.0f}/s, "
            f"ratio {results['ratio']:.2f}; at {args.rate:.0f}/s recommend p50 "
            f"{results['recommend_p50_ms']:.2f} ms p99 {results['recommend_p99_ms']:.2f} ms",
            flush=True,
        )

        with serve("stub_upstream", {}) as upstream:
            env2 = {
                "BENCH_DB": str(Path(tmp) / "proxy.db"),
                "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream}/v1",
            }
            direct = asyncio.run(
                sequential(
                    upstream,
                    request("/v1/chat/completions", json.dumps(CHAT).encode(), key=None),
                    args.calls,
                )
            )
            proxied_body = json.dumps(
                {**CHAT, "metadata": {"paramloop_task_type": "bench"}}
            ).encode()
            with serve("paramloop_app", env2) as proxy:
                via = asyncio.run(
                    sequential(proxy, request("/v1/chat/completions", proxied_body), args.calls)
                )
    if args.postgres:
        results["scaling"] = scaling(
            args.postgres, [int(w) for w in args.workers.split(",")], recommend, args.seconds
        )
    results["direct_p50_ms"], results["direct_p99_ms"] = _pct(direct, 50), _pct(direct, 99)
    results["proxy_p50_ms"], results["proxy_p99_ms"] = _pct(via, 50), _pct(via, 99)
    results["overhead_p50_ms"] = results["proxy_p50_ms"] - results["direct_p50_ms"]
    print(f"proxy overhead p50 {results['overhead_p50_ms']:.2f} ms", flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def scaling(url: str, workers: list[int], raw: bytes, seconds: float) -> list[dict[str, Any]]:
    """``POST /v1/recommend`` on PostgreSQL with 1, 2, 4 … uvicorn workers (replicas of one
    store), closed loop with 32 connections; each run on a fresh schema."""
    from paramloop.store.postgres import PostgresDecisionLog

    rows: list[dict[str, Any]] = []
    for n in workers:
        schema = f"bench_scaling_{os.getpid()}_{n}"
        PostgresDecisionLog(url, schema=schema).close()  # creates and migrates it
        env = {"BENCH_DATABASE_URL": f"{url}?options=-csearch_path%3D{schema}"}
        try:
            with serve("paramloop_app", env, workers=n) as port:
                asyncio.run(all_workers_up(port, n))
                spread: list[int] = []
                rps = asyncio.run(
                    closed_loop(port, raw, seconds, connections=32, spread=spread, workers=n)
                )
        finally:
            import sqlalchemy

            engine = sqlalchemy.create_engine(url)
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            engine.dispose()
        rows.append({"workers": n, "rps": rps, "connections_per_worker": spread})
        print(
            f"scaling: {n} worker(s) on PostgreSQL: {rps:.0f} recommend/s "
            f"(connections per worker: {spread})",
            flush=True,
        )
    for row in rows:
        row["ratio"] = row["rps"] / rows[0]["rps"]
    return rows


def table(r: dict[str, Any]) -> str:
    throughput = markdown_table(
        [
            "endpoint",
            "requests/s (closed loop, 16 connections)",
            f"p50 ms at {r['rate']:.0f}/s",
            f"p99 ms at {r['rate']:.0f}/s",
        ],
        [
            [
                "bare FastAPI JSON endpoint",
                f"{r['bare_rps']:.0f}",
                f"{r['bare_p50_ms']:.2f}",
                f"{r['bare_p99_ms']:.2f}",
            ],
            [
                "`POST /v1/recommend` (SQLite, durable)",
                f"{r['recommend_rps']:.0f}",
                f"{r['recommend_p50_ms']:.2f}",
                f"{r['recommend_p99_ms']:.2f}",
            ],
            ["ratio recommend / bare", f"{r['ratio']:.2f}", "", ""],
        ],
    )
    overhead = markdown_table(
        ["call (stub upstream, one at a time)", "p50 ms", "p99 ms"],
        [
            ["direct to the upstream", f"{r['direct_p50_ms']:.2f}", f"{r['direct_p99_ms']:.2f}"],
            ["through the paramloop proxy", f"{r['proxy_p50_ms']:.2f}", f"{r['proxy_p99_ms']:.2f}"],
            ["proxy overhead (difference of p50s)", f"{r['overhead_p50_ms']:.2f}", ""],
        ],
    )
    out = f"{throughput}\n\n{overhead}"
    if r.get("scaling"):
        out += "\n\n" + markdown_table(
            ["`POST /v1/recommend` on PostgreSQL", "requests/s (closed loop, 32 connections)",
             "× one worker"],
            [[f"{s['workers']} worker(s)", f"{s['rps']:.0f}", f"{s['ratio']:.2f}"]
             for s in r["scaling"]],
        )  # fmt: skip
    return out


if __name__ == "__main__":
    main()
