"""Replicas' news of new outcomes through Redis pub/sub (``server/broadcast.py``), on a real Redis."""

from __future__ import annotations

import asyncio

from paramloop.server.broadcast import Broadcast


def test_news_reaches_the_other_replica_after_a_silence_and_not_the_sender(redis_url: str) -> None:
    """A listener keeps its subscription through seconds of silence (a read timeout dropped it)."""

    async def run() -> tuple[bool, bool, list[Exception]]:
        errors: list[Exception] = []
        heard = {"a": asyncio.Event(), "b": asyncio.Event()}
        a = Broadcast(redis_url, wake=heard["a"].set, on_error=errors.append)
        b = Broadcast(redis_url, wake=heard["b"].set, on_error=errors.append)
        a.start()
        b.start()
        try:
            await asyncio.sleep(2.5)  # silence longer than any client timeout
            a.notify()
            await asyncio.wait_for(heard["b"].wait(), 1.0)
            await asyncio.sleep(0.2)
            return heard["b"].is_set(), heard["a"].is_set(), errors
        finally:
            await a.close()
            await b.close()

    other, sender, errors = asyncio.run(run())
    assert other and not sender
    assert errors == []
