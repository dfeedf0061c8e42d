"""Replicas tell each other that the log has news, through Redis pub/sub.

Every replica learns other replicas' outcomes from the shared log
(:meth:`paramloop.engine.Optimizer.sync`), every ``sync_interval_s``.  With
``REDIS_URL`` set, a replica that recorded outcomes also publishes one short
message on :data:`CHANNEL` (at most one per :data:`COALESCE_S`, however many
outcomes it recorded meanwhile), and every replica that hears it syncs at once:
a policy reflects another replica's outcome within a few hundred milliseconds
instead of up to a sync interval later.  The message carries no data, only
"look at the log": the log stays the one truth, a lost message costs at most
one interval, and a replica without Redis still converges by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("paramloop.server")

#: The pub/sub channel of "new outcomes in the log".
CHANNEL = "paramloop:outcomes"
#: Outcomes recorded within this many seconds share one message.
COALESCE_S = 0.05
#: Wait before resubscribing after Redis failed.
RETRY_S = 1.0
#: A listening connection idle this long is PINGed before it is read again.
HEALTH_CHECK_S = 10


class Broadcast:
    """Publish "new outcomes" and wake this replica's sync when another one publishes.

    ``wake`` is called (on the event loop) when another replica published;
    ``on_error`` when Redis failed (the service counts it; polling goes on).
    """

    def __init__(
        self, url: str, wake: Callable[[], None], on_error: Callable[[Exception], None]
    ) -> None:
        # Publishing must not hang the loop on a stuck Redis.  Listening polls for a message
        # every second with no socket timeout of its own (one would drop the subscription
        # whenever nobody spoke for a while); the client PINGs a connection idle for
        # HEALTH_CHECK_S before using it, so a dead one is noticed and resubscribed.
        self.client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.listener = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, health_check_interval=HEALTH_CHECK_S
        )
        self.wake, self.on_error = wake, on_error
        self.origin = uuid.uuid4().hex.encode()  # our own messages are not news
        self._pending = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_forever()),
            asyncio.create_task(self._listen_forever()),
        ]

    def notify(self) -> None:
        """This replica recorded outcomes (cheap: the message goes out from a background task)."""
        self._pending.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()
        await self.listener.aclose()

    async def _publish_forever(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self.client.publish(CHANNEL, self.origin)
            except (RedisError, OSError) as exc:
                self.on_error(exc)
            await asyncio.sleep(COALESCE_S)

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with self.listener.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message["data"] != self.origin:
                            self.wake()
            except (RedisError, OSError) as exc:
                self.on_error(exc)
                log.warning("broadcast: Redis failed (%s); polling only until it is back", exc)
                await asyncio.sleep(RETRY_S)
