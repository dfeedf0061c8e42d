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
    from paramloop.server.upstream_local import default_model_path

    try:
        return default_model_path()
    except ConfigError as exc:
        unavailable(str(exc))
        raise


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
    from paramloop.server.upstream_local import create_upstream_app

    app = create_upstream_app(local_model_path(), n_threads=1, n_ctx=1024, seed=0)
    with serving(app) as url:
        yield f"{url}/v1"
