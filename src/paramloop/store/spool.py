"""A store behind a deadline, with a durable local spool while it is unavailable.

:class:`SpooledStore` wraps the shared store (PostgreSQL, or a SQLite file) of
one service replica.  Every per-request call (log a decision, record an
outcome or a measurement, read one back) goes to the store on a worker thread
and must answer within ``deadline_s``.  When it does not, or the store says it
is unavailable (:class:`~paramloop.errors.StoreUnavailableError`: refused,
timed out, locked), the write goes to the **spool**: an append-only SQLite file
on the replica's own disk, committed with ``synchronous=FULL`` before the
caller is answered, so an acknowledged write survives a crash of the replica
as well as an outage of the store.  Until the store answers again, writes go
straight to the spool (no caller waits for a dead store twice).

A background thread **replays** the spool into the store in the order it was
written, then deletes each entry.  Replay is exactly once because every write
is idempotent by request id in the store: a decision already there (the replica
crashed between the store's commit and the spool's delete, or a timed-out write
landed late) is recognised as the same decision; an outcome or measurement
recorded twice counts once.  An entry the store refuses for good (another
replica recorded a *different* outcome for the request first: the first one
wins, as everywhere) is moved to the spool's ``refused`` table with the reason,
logged and counted, never silently dropped.

Reads see the spool first, so an outcome can be recorded for a decision that
is still spooled.  A spooled outcome comes back with ``seq = 0``: it has no
place in the store's sequence yet, so the optimizer learns it when it reaches
the store (:meth:`~paramloop.engine.Optimizer.sync`), once.

The spool uses the standard library's ``sqlite3``: a single local table needs
no ORM, and the spool must work when SQLAlchemy's pool is what is stuck.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    ParamloopError,
    StoreError,
    StoreUnavailableError,
)
from paramloop.store.base import Store
from paramloop.store.records import same_outcome
from paramloop.store.sql import (
    decision_row,
    measurement_row,
    measurement_task_type_mismatch,
    outcome_row,
    task_type_mismatch,
)
from paramloop.types import Decision, Outcome, RecordedOutcome

log = logging.getLogger("paramloop.store")
T = TypeVar("T")

Kind = Literal["decision", "outcome", "measurement"]
#: What replays first when entries share an order: a decision before its outcome.
KINDS: tuple[Kind, ...] = ("decision", "outcome", "measurement")

#: The store's short calls made on the request path or by the service's loops: they
#: get the deadline too (and fail at once while the store is down).  Long reads
#: (evaluation, export, imports) are the primary's own, unguarded.
GUARDED = frozenset(
    {
        "outcomes_since",
        "last_outcome_seq",
        "pending_measurements",
        "save_snapshot",
        "latest_snapshot",
        "get_state",
        "put_state",
        "list_states",
        "append_alert",
        "list_alerts",
        "save_gate_report",
        "get_gate_report",
        "latest_gate_report",
        "append_provenance",
        "list_provenance",
    }
)
_PROBE_ID = "__paramloop_probe__"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spooled (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        request_id TEXT NOT NULL,
        body BLOB NOT NULL,
        spooled_at REAL NOT NULL,
        UNIQUE (kind, request_id))""",
    """CREATE TABLE IF NOT EXISTS refused (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        request_id TEXT NOT NULL,
        body BLOB NOT NULL,
        spooled_at REAL NOT NULL,
        refused_at REAL NOT NULL,
        reason TEXT NOT NULL)""",
)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    id: int
    kind: Kind
    request_id: str
    body: dict[str, Any]


class Spool:
    """An append-only SQLite file of writes the store has not taken yet.

    Thread- and process-safe: the workers of one host (``--workers N``) may
    share one spool file; each reads it afresh, and replaying an entry twice is
    harmless (see :class:`SpooledStore`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")  # acknowledged = on disk
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except sqlite3.Error as exc:
            raise ConfigError("spool_path", f"cannot open the spool at {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The spool's lock, with its failures as :class:`StoreError` (a full disk, closed)."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"the spool at {self.path} failed: {exc}") from exc

    def __len__(self) -> int:
        return self._count("spooled")

    @property
    def refused(self) -> int:
        """How many entries the store refused for good (kept in the ``refused`` table)."""
        return self._count("refused")

    def put(self, kind: Kind, request_id: str, body: Mapping[str, Any]) -> bool:
        """Append one entry; ``False`` when one of this kind for ``request_id`` is there."""
        data = orjson.dumps(body)
        with self._locked():
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO spooled (kind, request_id, body, spooled_at) "
                "VALUES (?, ?, ?, ?)",
                (kind, request_id, data, time.time()),
            )
            return cursor.rowcount == 1

    def get(self, kind: Kind, request_id: str) -> dict[str, Any] | None:
        with self._locked():
            row = self._conn.execute(
                "SELECT body FROM spooled WHERE kind = ? AND request_id = ?", (kind, request_id)
            ).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def request_ids(self, kind: Kind) -> set[str]:
        with self._locked():
            rows = self._conn.execute(
                "SELECT request_id FROM spooled WHERE kind = ?", (kind,)
            ).fetchall()
        return {row[0] for row in rows}

    def oldest(self, limit: int) -> list[SpoolEntry]:
        with self._locked():
            rows = self._conn.execute(
                "SELECT id, kind, request_id, body FROM spooled ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [SpoolEntry(row[0], row[1], row[2], orjson.loads(row[3])) for row in rows]

    def remove(self, entries: list[SpoolEntry]) -> None:
        """Delete ``entries`` (in one transaction: one write to disk)."""
        with self._locked():
            self._conn.executemany(
                "DELETE FROM spooled WHERE id = ?", [(entry.id,) for entry in entries]
            )

    def refuse(self, entry: SpoolEntry, reason: str) -> None:
        """Move ``entry`` to the ``refused`` table with the store's reason."""
        with self._locked():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO refused (id, kind, request_id, body, spooled_at, refused_at, reason) "
                    "SELECT id, kind, request_id, body, spooled_at, ?, ? FROM spooled WHERE id = ?",
                    (time.time(), reason, entry.id),
                )
                self._conn.execute("DELETE FROM spooled WHERE id = ?", (entry.id,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._locked():
            self._conn.close()

    def _count(self, table: str) -> int:
        with self._locked():
            return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@dataclass
class SpoolStats:
    """What the spool did, for metrics and the readiness report."""

    spooled: int = 0
    replayed: int = 0
    refused: int = 0
    timeouts: int = 0
    outages: int = 0


class GroupCommit:
    """Decisions logged at the same time, committed in one transaction.

    Callers :meth:`submit` a decision and wait on the future it returns; one
    committer thread takes every decision waiting when it is free and appends
    them together (``Store.append_decisions``), so under load one commit (one
    round trip, one WAL write or fsync) carries many decisions while a lone
    decision is committed at once, with no added wait.  Each future resolves
    only after the transaction holding its decision has committed: an
    acknowledged decision is a committed one.

    A batch the store refuses for one of its rows (a request id logged
    before, a row it cannot store) is retried row by row, so each caller gets
    its own answer; when the store is unavailable every caller of the batch
    gets that error.  :meth:`fail_waiting` releases, at once, every caller
    whose decision has not been committed (the store went down): a decision
    already handed to the store may still land, which the spool's replay
    recognises as the same decision.
    """

    def __init__(self, primary: Store, *, max_batch: int = 256) -> None:
        self.primary = primary
        self.max_batch = max_batch
        #: Transactions committed and the decisions they held (for metrics and benches).
        self.commits = 0
        self.committed = 0
        self._waiting: list[tuple[Decision, Future[None]]] = []
        self._running: list[Future[None]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="paramloop-commit", daemon=True)
        self._thread.start()

    def submit(self, decision: Decision) -> Future[None]:
        future: Future[None] = Future()
        with self._cond:
            if self._closed:
                raise StoreError("append_decision: the store is closed")
            self._waiting.append((decision, future))
            self._cond.notify()
        return future

    def fail_waiting(self, exc: BaseException) -> None:
        """Fail every decision not committed yet with ``exc`` (their callers spool them)."""
        with self._cond:
            futures = [future for _, future in self._waiting] + self._running
            self._waiting = []
        for future in futures:
            _settle(future, exc)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)
        self.fail_waiting(StoreError("append_decision: the store is closed"))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                live = [(d, f) for d, f in batch if f.set_running_or_notify_cancel()]
                self._running = [future for _, future in live]
            try:
                self._commit(live)
            except BaseException as exc:  # the thread must live on: every caller gets the error
                for _, future in live:
                    _settle(future, exc)
            finally:
                with self._cond:
                    self._running = []

    def _commit(self, batch: list[tuple[Decision, Future[None]]]) -> None:
        if not batch:
            return
        if len(batch) > 1:
            try:
                self.primary.append_decisions([decision for decision, _ in batch])
            except StoreUnavailableError:
                raise
            except (ParamloopError, ValueError):
                pass  # one row is refused: each caller gets its own answer below
            else:
                self._done(len(batch))
                for _, future in batch:
                    _settle(future)
                return
        for decision, future in batch:
            try:
                self.primary.append_decision(decision)
            except StoreUnavailableError:
                raise
            except Exception as exc:
                _settle(future, exc)
            else:
                self._done(1)
                _settle(future)

    def _done(self, decisions: int) -> None:
        self.commits += 1
        self.committed += decisions


def _settle(future: Future[None], exc: BaseException | None = None) -> None:
    """Resolve ``future`` unless it is resolved already (released by :meth:`fail_waiting`)."""
    if future.done():
        return
    try:
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
    except InvalidStateError:
        pass


class SpooledStore:
    """``primary`` behind a ``deadline_s`` per call, spooling writes it cannot take.

    Per-request calls (``append_decision``, ``attach_outcome``,
    ``save_measurement`` and their reads) are guarded; every other
    :class:`~paramloop.store.base.Store` method is the primary's own (reports,
    evaluation, state: their callers handle a ``StoreError``).  ``retry_s`` is
    how often the spool is replayed and a down store probed.  ``on_event`` is
    called with ``("down", reason)``, ``("up", "")`` and ``("refused", reason)``
    (for alerts and metrics).
    """

    def __init__(
        self,
        primary: Store,
        spool_path: str | Path,
        *,
        deadline_s: float = 0.25,
        retry_s: float = 1.0,
        workers: int = 16,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        for name, value in (("deadline_s", deadline_s), ("retry_s", retry_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(name, f"must be a number of seconds > 0, got {value!r}")
        self.primary = primary
        self.spool = Spool(spool_path)
        self.deadline_s = float(deadline_s)
        self.retry_s = float(retry_s)
        self.on_event = on_event
        self.stats = SpoolStats()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="paramloop-store")
        self.commits = GroupCommit(primary)
        self._down: str | None = None  # why the store is considered down
        self._tripped: Future[str] = Future()  # resolved when the store goes down
        self._replay_lock = threading.Lock()
        self._stop = threading.Event()
        if len(self.spool):
            self._mark_down(f"{len(self.spool)} spooled writes from before the start to replay")
        self._replayer = threading.Thread(
            target=self._replay_forever, name="paramloop-spool", daemon=True
        )
        self._replayer.start()

    # -- state ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether writes go to the store (``False``: they are spooled)."""
        return self._down is None

    @property
    def down_reason(self) -> str | None:
        return self._down

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.primary, name)
        if name not in GUARDED:
            return method

        def guarded(*args: Any, **kwargs: Any) -> Any:
            call = functools.partial(method, *args, **kwargs)
            return self._call(name, call)

        return guarded

    # -- guarded calls ----------------------------------------------------------------

    def append_decision(self, decision: Decision) -> None:
        if self.spool.get("decision", decision.request_id) is not None:
            raise DuplicateRequestError(decision.request_id)
        if self.available:
            try:
                self._commit(decision)
                return
            except StoreUnavailableError:
                pass
        decision_row(decision)  # what the store would refuse is refused now, not at replay
        if not self.spool.put("decision", decision.request_id, decision.to_dict()):
            raise DuplicateRequestError(decision.request_id)
        self.stats.spooled += 1

    def get_decision(self, request_id: str) -> Decision | None:
        spooled = self.spool.get("decision", request_id)
        if spooled is not None:
            return Decision.from_dict(spooled)
        return self._call("get_decision", self.primary.get_decision, request_id)

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        decision = self.spool.get("decision", recorded.request_id)
        existing = self.spool.get("outcome", recorded.request_id)
        if decision is None and existing is None and self.available:
            try:
                return self._call("attach_outcome", self.primary.attach_outcome, recorded)
            except StoreUnavailableError:
                pass
        if decision is not None and decision["task_type"] != recorded.task_type:
            raise task_type_mismatch(recorded, decision["task_type"])
        if existing is None:
            outcome_row(recorded)
            if self.spool.put("outcome", recorded.request_id, _recorded_json(recorded)):
                self.stats.spooled += 1
                return replace(recorded, seq=0), True
            existing = self.spool.get("outcome", recorded.request_id)
            assert existing is not None
        stored = _recorded_from_json(existing)
        if same_outcome(stored, recorded):
            return stored, False
        raise ConflictingOutcomeError(recorded.request_id)

    def get_outcome(self, request_id: str) -> RecordedOutcome | None:
        spooled = self.spool.get("outcome", request_id)
        if spooled is not None:
            return _recorded_from_json(spooled)
        return self._call("get_outcome", self.primary.get_outcome, request_id)

    def save_measurement(
        self, request_id: str, task_type: str, measured: Outcome, timestamp: float
    ) -> bool:
        decision = self.spool.get("decision", request_id)
        spooled = self.spool.get("measurement", request_id)
        if decision is None and spooled is None and self.available:
            try:
                return self._call(
                    "save_measurement",
                    self.primary.save_measurement,
                    request_id,
                    task_type,
                    measured,
                    timestamp,
                )
            except StoreUnavailableError:
                pass
        if decision is not None and decision["task_type"] != task_type:
            raise measurement_task_type_mismatch(request_id, task_type, decision["task_type"])
        measurement_row(request_id, task_type, measured, timestamp)
        body = {"task_type": task_type, "outcome": measured.to_dict(), "timestamp": timestamp}
        if self.spool.put("measurement", request_id, body):
            self.stats.spooled += 1
            return True
        existing = self.spool.get("measurement", request_id)
        if existing is not None and Outcome.from_dict(existing["outcome"]) == measured:
            return False
        raise ConflictingOutcomeError(request_id)

    def get_measurement(self, request_id: str) -> Outcome | None:
        spooled = self.spool.get("measurement", request_id)
        if spooled is not None:
            return Outcome.from_dict(spooled["outcome"])
        return self._call("get_measurement", self.primary.get_measurement, request_id)

    def pending_decisions(self, task_type: str, before: float, limit: int) -> list[Decision]:
        # A decision whose outcome waits in the spool is not pending: no default reward for it.
        answered = self.spool.request_ids("outcome")
        rows = self._call(
            "pending_decisions", self.primary.pending_decisions, task_type, before, limit
        )
        return [d for d in rows if d.request_id not in answered]

    def close(self) -> None:
        """Stop replaying (what is spooled stays for the next start) and close both stores."""
        self._stop.set()
        self.commits.close()
        self._replayer.join(timeout=10 * self.deadline_s + self.retry_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.spool.close()
        self.primary.close()

    # -- replay -----------------------------------------------------------------------

    def replay(self) -> int:
        """Write the spool into the store in order (exactly once); how many entries went in.

        As soon as the store takes a write again, new writes go to it while the
        backlog drains behind them (an outcome whose decision is still spooled
        is spooled too, so the store always sees a decision before its outcome).
        Stops at the first entry the store does not answer for: it is down again.
        """
        with self._replay_lock:
            done = 0
            while not self._stop.is_set():
                batch = self.spool.oldest(500)
                if not batch:
                    break
                for group in _runs(batch):
                    if self._stop.is_set():
                        return done
                    try:
                        applied = self._apply(group)
                    except StoreUnavailableError as exc:
                        self._mark_down(str(exc))
                        return done
                    self._mark_up()
                    self.spool.remove(applied)
                    self.stats.replayed += len(applied)
                    done += len(applied)
            if self._down is not None:
                try:
                    self.primary.get_decision(_PROBE_ID)
                except StoreUnavailableError as exc:
                    self._down = str(exc)
                    return done
                self._mark_up()
            return done

    def _apply(self, group: list[SpoolEntry]) -> list[SpoolEntry]:
        """Write ``group`` (entries of one kind) to the store; the entries it now holds.

        Decisions go in one transaction; when one is refused, one by one.  An
        entry the store refuses for good is moved to the ``refused`` table.
        """
        # On the replay thread itself, without the deadline: a store that hangs holds
        # only this thread, and the replay goes on when the store answers.
        if group[0].kind == "decision" and len(group) > 1:
            try:
                self.primary.append_decisions([Decision.from_dict(e.body) for e in group])
                return group
            except DuplicateRequestError:
                pass  # a replica crashed after the store's commit: sort them out one by one
        applied: list[SpoolEntry] = []
        for entry in group:
            try:
                self._apply_one(entry)
            except StoreUnavailableError:
                if applied:
                    self.spool.remove(applied)
                    self.stats.replayed += len(applied)
                raise
            except (ParamloopError, ValueError) as exc:
                self._refuse(entry, exc)
                continue
            applied.append(entry)
        return applied

    def _apply_one(self, entry: SpoolEntry) -> None:
        body = entry.body
        if entry.kind == "decision":
            decision = Decision.from_dict(body)
            try:
                self.primary.append_decision(decision)
            except DuplicateRequestError:
                stored = self.primary.get_decision(entry.request_id)
                if stored is None or orjson.dumps(stored.to_dict()) != orjson.dumps(
                    decision.to_dict()
                ):
                    raise  # another decision under this id: not ours to overwrite
        elif entry.kind == "outcome":
            self.primary.attach_outcome(_recorded_from_json(body))
        else:
            self.primary.save_measurement(
                entry.request_id,
                body["task_type"],
                Outcome.from_dict(body["outcome"]),
                float(body["timestamp"]),
            )

    def _refuse(self, entry: SpoolEntry, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.spool.refuse(entry, reason)
        self.stats.refused += 1
        log.error(
            "the store refused a spooled %s: %s",
            entry.kind,
            reason,
            extra={"request_id": entry.request_id},
        )
        if self.on_event is not None:
            self.on_event("refused", reason)

    def _replay_forever(self) -> None:
        while not self._stop.wait(self.retry_s):
            if not len(self.spool) and self._down is None:
                continue
            try:
                self.replay()
            except Exception as exc:  # the thread must live on; the next round retries
                log.error("replaying the spool failed: %s", exc, exc_info=exc)

    # -- the deadline -----------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        if self._stop.is_set():
            raise StoreError(f"{operation}: the store is closed")
        if self._down is not None:
            raise StoreUnavailableError(
                f"{operation}: the store is unavailable ({self._down}); writes are spooled"
            )
        try:
            return self._guarded(fn, *args)
        except StoreUnavailableError as exc:
            self._mark_down(str(exc))
            raise

    def _commit(self, decision: Decision) -> None:
        """Log ``decision`` in the store's next group commit, within the deadline."""
        if self._stop.is_set():
            raise StoreError("append_decision: the store is closed")
        if self._down is not None:
            raise StoreUnavailableError(
                f"append_decision: the store is unavailable ({self._down}); writes are spooled"
            )
        future = self.commits.submit(decision)
        try:
            future.result(timeout=self.deadline_s)
        except FutureTimeout:
            future.cancel()  # not taken yet: it never runs; taken: it may land, harmlessly
            self.stats.timeouts += 1
            exc = StoreUnavailableError(
                f"the store did not answer within {self.deadline_s * 1000:g} ms"
            )
            self._mark_down(str(exc))
            raise exc from None
        except StoreUnavailableError as exc:
            self._mark_down(str(exc))
            raise

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker, within the deadline.

        The wait also ends as soon as another call finds the store down: callers
        waiting together on a stuck store are released together.
        """
        future = self._pool.submit(fn, *args)
        waited: list[Future[Any]] = [future, self._tripped]
        wait(waited, timeout=self.deadline_s, return_when=FIRST_COMPLETED)
        if future.done():
            return future.result()
        future.cancel()  # not started yet: it never runs; started: it may land, harmlessly
        if self._tripped.done():
            raise StoreUnavailableError(f"the store went down meanwhile ({self._down})")
        self.stats.timeouts += 1
        raise StoreUnavailableError(
            f"the store did not answer within {self.deadline_s * 1000:g} ms"
        ) from None

    def _mark_down(self, reason: str) -> None:
        if self._down is None:
            self._down = reason
            self._tripped.set_result(reason)
            # Decisions waiting for a commit are spooled by their callers now, not at their deadline.
            self.commits.fail_waiting(
                StoreUnavailableError(f"the store went down meanwhile ({reason})")
            )
            self.stats.outages += 1
            log.error("the store is unavailable; spooling writes on this replica: %s", reason)
            if self.on_event is not None:
                self.on_event("down", reason)

    def _mark_up(self) -> None:
        if self._down is not None:
            self._tripped = Future()
            self._down = None
            log.warning("the store answers again; the spool is replayed")
            if self.on_event is not None:
                self.on_event("up", "")


def _runs(entries: list[SpoolEntry]) -> list[list[SpoolEntry]]:
    """``entries`` cut into runs of one kind, in order."""
    runs: list[list[SpoolEntry]] = []
    for entry in entries:
        if runs and runs[-1][0].kind == entry.kind:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _recorded_json(recorded: RecordedOutcome) -> dict[str, Any]:
    return {
        "request_id": recorded.request_id,
        "task_type": recorded.task_type,
        "outcome": recorded.outcome.to_dict(),
        "reward": recorded.reward,
        "reward_version": recorded.reward_version,
        "source": recorded.source,
        "timestamp": recorded.timestamp,
    }


def _recorded_from_json(data: Mapping[str, Any]) -> RecordedOutcome:
    return RecordedOutcome(
        request_id=data["request_id"],
        task_type=data["task_type"],
        outcome=Outcome.from_dict(data["outcome"]),
        reward=float(data["reward"]),
        reward_version=data["reward_version"],
        source=data["source"],
        timestamp=float(data["timestamp"]),
    )


__all__ = ["GroupCommit", "Spool", "SpoolEntry", "SpoolStats", "SpooledStore"]
