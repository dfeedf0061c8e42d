"""Store fixtures: every store test runs once per backend, each on its own database.

``store`` is any :class:`Store` (decision log and audit log): the in-memory
one, SQLite and PostgreSQL.  What only a database has (reopening it, its
migrations, its schema) is tested through ``durable_store_spec``,
``open_store_at``, ``durable_store`` and ``engine`` (a connection to the same
database that bypasses the store), which cover SQLite and PostgreSQL only.

SQLite gets a file in the test's temporary directory.  PostgreSQL gets a fresh
schema in the server at ``PARAMLOOP_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://root@127.0.0.1:5432/test``), dropped afterwards.  When
that server is unreachable the PostgreSQL cases are skipped, or fail when
``CI=true``: CI must never pass without testing the production store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from paramloop.store.base import Store
from paramloop.store.memory import MemoryDecisionLog
from paramloop.store.postgres import PostgresDecisionLog, psycopg_url
from paramloop.store.spool import SpooledStore
from paramloop.store.sqlite import SQLiteDecisionLog

POSTGRES_URL_ENV = "PARAMLOOP_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"

#: (backend, location, schema): a SQLite file path, or a PostgreSQL URL and schema.
StoreSpec = tuple[str, str, str | None]


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


def open_spec(spec: StoreSpec) -> Store:
    backend, location, schema = spec
    if backend == "sqlite":
        return SQLiteDecisionLog(location)
    return PostgresDecisionLog(location, schema=schema)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    """An engine on the test server, for creating and dropping schemas."""
    url = psycopg_url(postgres_url())
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        engine.dispose()
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        reason = (
            f"PostgreSQL is unreachable at {url.render_as_string(hide_password=True)} "
            f"({str(cause).strip()}); set {POSTGRES_URL_ENV} to a server the tests may "
            "create schemas in"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_schema(postgres_engine: Engine) -> Iterator[str]:
    """The name of a schema no other test uses; the store creates it, teardown drops it."""
    name = f"paramloop_test_{uuid.uuid4().hex[:16]}"
    yield name
    with postgres_engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


DURABLE_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def durable_spec(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """A database for this test only: a file in ``tmp_path``, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        return ("sqlite", str(tmp_path / "decisions.db"), None)
    schema: str = request.getfixturevalue("postgres_schema")
    return ("postgres", postgres_url(), schema)


@pytest.fixture(params=DURABLE_BACKENDS)
def durable_store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    return durable_spec(request.param, request, tmp_path)


@pytest.fixture
def store_spec(durable_store_spec: StoreSpec) -> StoreSpec:
    """The name ``tests/test_store_crash.py`` uses for ``durable_store_spec``."""
    return durable_store_spec


@pytest.fixture
def open_store_at(durable_store_spec: StoreSpec) -> Iterator[Callable[[], Store]]:
    """Open (or reopen) a store on the test's database; every store opened is closed afterwards."""
    opened: list[Store] = []

    def open_() -> Store:
        store = open_spec(durable_store_spec)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def durable_store(open_store_at: Callable[[], Store]) -> Store:
    """A SQLite or PostgreSQL store (see ``open_store_at`` to reopen its database)."""
    return open_store_at()


@pytest.fixture(params=["memory", *DURABLE_BACKENDS, "spooled"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every store implementation, each on a database of its own.

    ``spooled`` is a SQLite store behind :class:`SpooledStore` (its deadline and
    spool): with the store up it must behave exactly as the store itself.
    """
    store: Store
    if request.param == "memory":
        store = MemoryDecisionLog()
    elif request.param == "spooled":
        primary = SQLiteDecisionLog(str(tmp_path / "decisions.db"))
        store = cast(Store, SpooledStore(primary, tmp_path / "spool.db", deadline_s=30))
    else:
        store = open_spec(durable_spec(request.param, request, tmp_path))
    yield store
    store.close()


def raw_engine(spec: StoreSpec) -> Engine:
    """An engine on the test's database that bypasses the store (for schema checks)."""
    backend, location, schema = spec
    if backend == "sqlite":
        return create_engine(URL.create("sqlite+pysqlite", database=location), poolclass=NullPool)
    return create_engine(
        psycopg_url(location),
        poolclass=NullPool,
        connect_args={"options": f"-c search_path={schema}"},
    )


@pytest.fixture
def engine(durable_store_spec: StoreSpec) -> Iterator[Engine]:
    """An engine on the test's database (its PostgreSQL schema created) that bypasses the store."""
    engine = raw_engine(durable_store_spec)
    _, _, schema = durable_store_spec
    if schema is not None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    yield engine
    engine.dispose()


# -- HTTP servers in this process ------------------------------------------------------------
#
# ``serve_app`` runs an ASGI app under uvicorn on a free loopback port, in a thread of
# this process; ``local_upstream_url`` is the real local model (SmolLM2-135M on
# llama.cpp), loaded once per session.  Without llama-cpp-python or the model the
# tests that need it skip, or fail when ``CI=true``.


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def local_model_path() -> Path:
    """The SmolLM2 model file, or skip (fail in CI) when it or llama.cpp is missing."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        unavailable(
            f"llama-cpp-python is not importable ({exc}); `make install` builds it "
            "(pip install 'paramloop[llm]' with CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF')"
        )
    from paramloop.errors import ConfigError
    from paramloop.local.upstream import default_model_path

    try:
        return default_model_path()
    except ConfigError as exc:
        unavailable(str(exc))
        raise


def free_socket() -> socket.socket:
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say
    # they are TCP, and without it each keep-alive answer waits ~40 ms (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(app: Any, *, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of ``app`` served by uvicorn from a background thread."""
    import uvicorn

    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", ws="none", http="h11", lifespan=lifespan, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture
def local_model() -> Path:
    """The SmolLM2 model file (skips, or fails in CI, when it or llama.cpp is missing)."""
    return local_model_path()


@pytest.fixture
def free_port() -> int:
    """A loopback port that was free a moment ago (for a server in another process)."""
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@pytest.fixture
def serve_app() -> Callable[..., AbstractContextManager[str]]:
    """``with serve_app(app) as url:`` runs ``app`` on a free port for the block."""
    return serving


@pytest.fixture(scope="session")
def local_upstream_url() -> Iterator[str]:
    """The ``/v1`` URL of the real local model, served from a thread (once per session)."""
    from paramloop.local.upstream import create_upstream_app

    app = create_upstream_app(local_model_path(), n_threads=1, n_ctx=1024, seed=0)
    with serving(app) as url:
        yield f"{url}/v1"


class ParamloopProcess:
    """``paramloop serve --config …`` in a process of its own, on a free port (``url``).

    ``config=None`` serves without one (the embedded default); ``cwd`` is its working
    directory; ``stderr`` a file that receives its log lines.
    """

    def __init__(
        self,
        config: Path | None,
        port: int,
        *extra: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stderr: Path | None = None,
    ) -> None:
        import subprocess
        import sys

        self.url = f"http://127.0.0.1:{port}"
        where = [] if config is None else ["--config", str(config)]
        self._stderr = None if stderr is None else stderr.open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("paramloop")), "serve", *where,
             "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if self._stderr is None else self._stderr,
            cwd=cwd,
            env=env,
        )  # fmt: skip

    def wait_up(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"paramloop serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        pytest.fail("paramloop serve did not start")

    def kill(self) -> None:
        """``kill -9``: no shutdown, no snapshot, no goodbye."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._stderr is not None:
            self._stderr.close()


@pytest.fixture
def paramloop_process() -> Iterator[Callable[..., ParamloopProcess]]:
    """``paramloop_process(config, *flags, cwd=…, env=…, stderr=…)`` starts ``paramloop serve``
    and waits until it is live; every one started is stopped (SIGTERM) at teardown."""
    started: list[ParamloopProcess] = []

    def start(config: Path | None, *extra: str, **options: Any) -> ParamloopProcess:
        sock = free_socket()
        port = int(sock.getsockname()[1])
        sock.close()
        server = ParamloopProcess(config, port, *extra, **options)
        started.append(server)
        server.wait_up()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def postgres_database_url() -> str:
    """The test PostgreSQL server's SQLAlchemy URL (``PARAMLOOP_TEST_POSTGRES_URL``)."""
    return postgres_url()


@pytest.fixture
def redis_url() -> str:
    """The test Redis (127.0.0.1:6379, db 15), or skip (fail when ``CI=true``) without it."""
    import redis

    url = os.environ.get("PARAMLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {url} ({exc}); start it with `redis-server`")
    finally:
        client.close()
    return url


# -- store outages ------------------------------------------------------------------------
#
# ``FaultyLink(("127.0.0.1", 5432))`` listens on a free loopback port and forwards every
# connection to the target.  ``freeze()`` stops moving bytes in both directions (a server
# that hangs: SIGSTOP, a full disk, a partition that drops packets); ``cut()`` closes every
# connection and refuses new ones (a stopped or restarting server); ``restore()`` ends
# either.  ``faulty_postgres`` is one in front of the test PostgreSQL server.

State = Literal["up", "frozen", "cut"]


class FaultyLink:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.state: State = "up"
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faulty-link", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._set("frozen")

    def cut(self) -> None:
        self._set("cut")

    def restore(self) -> None:
        self._set("up")

    def close(self) -> None:
        self._set("cut")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _set(self, state: State) -> None:
        done = threading.Event()

        def apply() -> None:
            self.state = state
            if state == "up":
                self._flowing.set()
            else:
                self._flowing.clear()
            if state == "cut":
                for writer in list(self._writers):
                    writer.transport.abort()
                self._writers.clear()
            done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._loop.run_until_complete(server.wait_closed())
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # frozen: the bytes wait here, unanswered
                if self.state == "cut":
                    return
                writer.write(data)
                await writer.drain()


@pytest.fixture
def faulty_postgres(postgres_engine: Engine) -> Iterator[FaultyLink]:
    """A :class:`FaultyLink` to the test PostgreSQL server."""
    url = postgres_engine.url
    link = FaultyLink((url.host or "127.0.0.1", url.port or 5432))
    yield link
    link.close()
