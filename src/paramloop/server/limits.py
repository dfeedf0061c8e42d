"""Backpressure: a cap on the work in progress, and per-key rate limits, as LLM gateways have.

Two guards, both answering before any decision is logged, so a refused request
teaches nothing and costs no arm anything:

* **Admission** (:class:`Admission`, ASGI middleware): at most
  ``max_concurrency`` POST requests are in progress at once (decisions,
  proxied calls, admin actions; outcome and feedback reports are never
  refused: refused, a measured call would become a default reward); the
  next ones wait up to
  ``queue_timeout_s`` for a slot, then get ``503`` with ``Retry-After``.  A
  proxied stream holds its slot until its last byte.  The upstream connection
  pool is at least as large (``upstream_max_connections`` ≥
  ``max_concurrency``), so a call that was admitted never queues for a
  connection: paramloop's own queueing is never an upstream error charged to
  an arm.
* **Rate limits** (:class:`RateLimits`): requests per minute per API key on
  every write route but the outcome reports, and tokens per minute per key on
  proxied calls (the
  prompt's estimate plus the ``max_tokens`` asked for, charged when the call
  is admitted).  Over a limit the answer is ``429`` with ``Retry-After``: the
  seconds until the refused amount has freed up at the limit's own rate (the
  window is a sliding one, so it frees gradually).  A call larger than the
  whole limit could never pass: ``429`` without ``Retry-After``.  The
  counters are the ``limits`` library's sliding-window counters, in this
  process's memory or, with ``REDIS_URL``, in Redis, so replicas share one
  limit per key.  If Redis fails the request is let through (and counted in
  ``paramloop_errors_total{kind="rate_limit_store"}``), and so is one that
  does not answer within :data:`STORE_TIMEOUT_S`: a limiter outage must not
  become a service outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("paramloop.server")

#: Key prefix of paramloop's counters in a shared Redis.
KEY_PREFIX = "paramloop"
#: The name the rate limiter's connections give Redis (``CLIENT LIST`` shows it).
CLIENT_NAME = "paramloop-rate-limits"
#: How long a request waits for the counters' store before it is let through.
STORE_TIMEOUT_S = 0.25
#: Write routes that are never refused: reports of calls that already happened.
REPORTS = frozenset({"/v1/outcomes", "/v1/feedback", "/api/optimization/record-outcome"})


class ThrottledError(Exception):
    """A request refused by backpressure: ``status`` 429 or 503, retry after ``retry_after_s``."""

    def __init__(self, status: int, message: str, kind: str, retry_after_s: int | None) -> None:
        self.status, self.kind = status, kind
        self.retry_after_s = None if retry_after_s is None else max(1, retry_after_s)
        super().__init__(message)

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": str(self), "type": self.kind, "param": None, "code": self.kind}}
        )

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """One key's limits per minute (``None``: unlimited)."""

    rpm: int | None = None
    tpm: int | None = None


class RateLimits:
    """Per-key requests and tokens per minute (see the module docstring).

    ``default`` applies to every key without its own entry in ``per_key``;
    ``storage_url`` is ``None`` (this process's memory) or a ``redis://`` URL.
    ``on_store_error`` is called when the counters' store fails (the request
    is then let through).
    """

    def __init__(
        self,
        default: KeyLimits,
        per_key: Mapping[str, KeyLimits],
        storage_url: str | None = None,
        *,
        on_store_error: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self.default, self.per_key = default, dict(per_key)
        # The Redis connections are ours (the limits library never closes its own):
        # :meth:`close` closes them when the service stops.
        self._pool: aioredis.ConnectionPool | None = None
        if storage_url is None:
            storage = storage_from_string("async+memory://")
        else:
            self._pool = aioredis.ConnectionPool.from_url(
                storage_url,
                socket_timeout=STORE_TIMEOUT_S,
                socket_connect_timeout=STORE_TIMEOUT_S,
                client_name=CLIENT_NAME,
            )
            storage = storage_from_string(
                f"async+{storage_url}",
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis.asyncio.Redis
            )
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self.on_store_error = on_store_error
        self._items: dict[tuple[str, int], RateLimitItem] = {}

    async def close(self) -> None:
        """Close the connections to Redis (the service's shutdown does)."""
        if self._pool is not None:
            await self._pool.aclose()

    @property
    def active(self) -> bool:
        """Whether any key has a limit (otherwise nothing is counted)."""
        limits = [self.default, *self.per_key.values()]
        return any(k.rpm is not None or k.tpm is not None for k in limits)

    def of(self, caller: str) -> KeyLimits:
        return self.per_key.get(caller, self.default)

    async def request(self, caller: str) -> None:
        """Count one request of ``caller``; raises :class:`ThrottledError` (429) past its RPM."""
        limit = self.of(caller).rpm
        if limit is not None:
            await self._hit("requests", caller, limit, 1)

    async def tokens(self, caller: str, tokens: int) -> None:
        """Count ``tokens`` of ``caller``; raises :class:`ThrottledError` (429) past its TPM.

        A call larger than the whole limit is refused outright: it could never fit.
        """
        limit = self.of(caller).tpm
        if limit is None:
            return
        if tokens > limit:
            raise ThrottledError(
                429,
                f"this call may use {tokens} tokens; the key {caller!r} may use {limit} per "
                "minute, so it can never pass: ask for fewer max_tokens or a shorter prompt",
                "tokens",
                None,
            )
        await self._hit("tokens", caller, limit, max(1, tokens))

    async def _hit(self, kind: str, caller: str, limit: int, cost: int) -> None:
        item = self._item(kind, limit)
        try:
            admitted = await asyncio.wait_for(
                self.limiter.hit(item, kind, caller, cost=cost), STORE_TIMEOUT_S
            )
            if admitted:
                return
            stats = await asyncio.wait_for(
                self.limiter.get_window_stats(item, kind, caller), STORE_TIMEOUT_S
            )
        except Exception as exc:  # the counters' store is down or slow: let the request through
            self.on_store_error(exc)
            log.warning("rate limit store failed; request let through", exc_info=exc)
            return
        # The window slides: what was counted frees at the limit's rate (limit per 60 s). The
        # limiter's reset time is when the first unit frees; the refused amount takes longer.
        retry = math.ceil(max(stats.reset_time - time.time(), 60.0 * cost / limit))
        unit = "requests" if kind == "requests" else "tokens"
        raise ThrottledError(
            429,
            f"rate limit of the key {caller!r}: {limit} {unit} per minute; retry in {max(1, retry)} s",
            kind,
            retry,
        )

    def _item(self, kind: str, limit: int) -> RateLimitItem:
        key = (kind, limit)
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = RateLimitItemPerMinute(limit)
        return item


class Admission:
    """ASGI middleware: at most ``limit`` POST requests in progress (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        queue_timeout_s: float,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.queue_timeout_s = queue_timeout_s
        self.on_refused = on_refused
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        """The slots of the running loop (an app served again on a new loop gets new ones)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.limit), loop
        return self._slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] in REPORTS:
            await self.app(scope, receive, send)
            return
        slots = self._semaphore()
        try:
            if slots.locked():  # wait for a slot (a free one is taken without a timer task)
                await asyncio.wait_for(slots.acquire(), self.queue_timeout_s)
            else:
                await slots.acquire()
        except TimeoutError:
            self.on_refused()
            refused = ThrottledError(
                503,
                f"the service is at its limit of {self.limit} requests in progress; retry shortly",
                "overloaded",
                1,
            )
            await send_throttled(send, refused)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release()


async def send_throttled(send: Send, refused: ThrottledError) -> None:
    """Answer ``refused`` as a JSON error (OpenAI's error shape) with ``Retry-After``."""
    body = refused.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in refused.headers().items()),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
