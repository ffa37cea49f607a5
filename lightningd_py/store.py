"""The sqlite database: one writer that batches, readers on their own connections.

Every write goes through a single writer connection. Writes queued while a batch is
being committed are committed together in the next transaction, so a burst of events
costs one commit, not one per event. Each unit of work runs inside its own savepoint,
so one failing write never takes another owner's writes down with it. The WAL is
copied back into the database file by a connection of its own, shortly after commits,
so commits seldom wait for a checkpoint's fsyncs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog
from anyio.abc import TaskStatus

from .errors import StoreError

__all__ = ["Migration", "Store", "StoreHandle"]

T = TypeVar("T")
log = structlog.get_logger("lightningd_py.store")

# Units queued beyond this make writers wait: memory stays bounded under any burst.
MAX_PENDING = 20_000
READERS = 3
# Checkpoints (copying the WAL into the database file, with its fsyncs) run on a
# connection of their own beside the writer, this long after a commit. The writer still
# checkpoints at WAL_PAGES: by then the pages are mostly copied and synced, so its own
# checkpoint is short, and only a checkpoint the writer completes lets the next
# transaction start the WAL over (the file stays within about WAL_PAGES pages).
CHECKPOINT_DELAY = 0.25
WAL_PAGES = 4000
# The writer's page cache (KiB). A burst writes into tables keyed by payment hash, so
# each commit touches pages all over them: with sqlite's default 2 MiB, most of those
# pages are read back from the file on every commit. The cache is given back once a
# burst is over (``release_memory``).
WRITER_CACHE_KIB = 16_384


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step of an owner (the core or a plugin).

    :ivar version: 1, 2, 3, ... applied in order, once per database.
    :ivar sql: a script of SQL statements (run with ``executescript``), or a function
        taking the ``sqlite3.Connection``.
    """

    version: int
    sql: str | Callable[[sqlite3.Connection], None]


@dataclass(slots=True)
class _Unit:
    owner: str
    sql: str | None
    params: Any
    many: bool
    fn: Callable[[sqlite3.Connection], Any] | None
    future: asyncio.Future[Any] | None
    on_commit: Callable[[Any], None] | None = None


def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE: copies what no reader still needs, never waits for or blocks the writer.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _shrink(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA shrink_memory")


@dataclass(slots=True)
class StoreStats:
    batches: int = 0
    units: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0
    errors: int = 0


class Store:
    """The daemon's database. Plugins use it through ``StoreHandle`` (``daemon.store``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._reader_limiter = anyio.CapacityLimiter(READERS)
        self._pending: list[_Unit] = []
        # Held while a batch runs on the writer connection, which is not thread-safe.
        self._writing = anyio.Lock()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._committed = asyncio.Event()
        self._checkpointer: sqlite3.Connection | None = None
        self._owner_errors: dict[str, list[BaseException]] = {}
        self.stats = StoreStats()
        self.batch_observers: list[Callable[[int, float], None]] = []
        self.failed: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open the connections and create the core bookkeeping tables (synchronous)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._writer.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions "
                "(owner TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            self._readers = [self._connect(readonly=True) for _ in range(READERS)]
            self._checkpointer = self._connect()
            self._writer.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # Savepoints keep the pages they change in a sub-journal, which sqlite writes to a
        # temporary file past 64 KiB. Kept in memory instead (temp_store=MEMORY), a burst
        # wrote a third less, but its many small blocks were spread over glibc's thread
        # arenas: resident memory after 300,000 events grew +27 % instead of +14 %.
        if readonly:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def version(self, owner: str) -> int:
        """The owner's schema version: its last migration applied, 0 for none (at start)."""
        sql = "SELECT version FROM schema_versions WHERE owner = ?"
        row = self._require_writer().execute(sql, (owner,)).fetchone()
        return row[0] if row else 0

    def migrate(self, owner: str, migrations: Iterable[Migration]) -> list[int]:
        """Apply the owner's migrations not yet applied, each in its own transaction.

        Runs synchronously at start, before the writer task runs. Returns the versions
        applied.
        """
        conn = self._require_writer()
        current = self.version(owner)
        steps = sorted(migrations, key=lambda m: m.version)
        versions = [m.version for m in steps]
        if len(set(versions)) != len(versions) or any(v < 1 for v in versions):
            raise StoreError(f"{owner}: migration versions must be distinct integers >= 1, got {versions}")
        applied = []
        for m in steps:
            if m.version <= current:
                continue
            try:
                conn.execute("BEGIN IMMEDIATE")
                if callable(m.sql):
                    m.sql(conn)
                else:
                    for statement in _split_sql(m.sql):
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_versions(owner, version) VALUES (?, ?) "
                    "ON CONFLICT(owner) DO UPDATE SET version = excluded.version",
                    (owner, m.version),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"{owner}: migration {m.version} failed: {exc}") from exc
            applied.append(m.version)
        return applied

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer service: commits queued units in batches until cancelled, and
        checkpoints the WAL beside it."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._checkpoints)
            task_status.started()
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                await self._drain()

    async def _checkpoints(self) -> None:
        conn = self._checkpointer
        if conn is None:
            return
        # What migrations wrote before the service ran goes first.
        self._committed.set()
        while True:
            await self._committed.wait()
            await anyio.sleep(CHECKPOINT_DELAY)
            self._committed.clear()
            try:
                await anyio.to_thread.run_sync(_checkpoint, conn)
            except sqlite3.Error as exc:
                log.warning("database checkpoint failed; retried after the next commit", error=str(exc))

    async def _drain(self) -> None:
        while self._pending:
            units, self._pending = self._pending, []
            self._room.set()
            started = time.perf_counter()
            # Not abandoned on cancel: a batch in flight always finishes and resolves.
            async with self._writing:
                results = await anyio.to_thread.run_sync(self._run_batch, units)
            elapsed = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.units += len(units)
            self._committed.set()
            self.stats.last_batch_size = len(units)
            self.stats.last_batch_seconds = elapsed
            for observe in self.batch_observers:
                observe(len(units), elapsed)
            for unit, (ok, value) in zip(units, results, strict=True):
                if ok and unit.on_commit is not None:
                    unit.on_commit(value)
                if unit.future is not None:
                    if unit.future.done():
                        continue
                    if ok:
                        unit.future.set_result(value)
                    else:
                        unit.future.set_exception(value)
                elif not ok:
                    self._owner_errors.setdefault(unit.owner, []).append(value)

    def _run_batch(self, units: list[_Unit]) -> list[tuple[bool, Any]]:
        conn = self._require_writer()
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for unit in units:
                if unit.fn is None and unit.sql is None:
                    results.append((True, None))
                elif unit.fn is None:
                    # One statement is atomic on its own in sqlite: no savepoint needed.
                    try:
                        if unit.many:
                            value = conn.executemany(unit.sql, unit.params).rowcount
                        else:
                            value = conn.execute(unit.sql, unit.params).rowcount
                        results.append((True, value))
                    except sqlite3.Error as exc:  # a plugin's failed write is its own, never the batch's
                        results.append((False, self._unit_error(unit, exc)))
                else:
                    conn.execute("SAVEPOINT unit")
                    try:
                        value = unit.fn(conn)
                        conn.execute("RELEASE unit")
                        results.append((True, value))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO unit")
                        conn.execute("RELEASE unit")
                        results.append((False, self._unit_error(unit, exc)))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.stats.errors += 1
            log.error("database commit failed", error=str(exc), units=len(units))
            failure = StoreError(f"database write failed: {exc}")
            failure.__cause__ = exc
            self.failed = failure
            return [(False, failure) for _ in units]
        self.failed = None
        return results

    def _unit_error(self, unit: _Unit, exc: BaseException) -> BaseException:
        self.stats.errors += 1
        if isinstance(exc, StoreError):
            return exc
        err = StoreError(f"{unit.owner}: {exc}")
        err.__cause__ = exc
        return err

    async def flush(self) -> None:
        """Wait until every unit queued so far is committed."""
        await self._submit(_Unit("core", None, None, False, None, asyncio.get_running_loop().create_future()))

    async def close(self) -> None:
        """Commit what is queued and close every connection."""
        if self._pending:
            await self._drain()
        for conn in [self._writer, *self._readers, self._checkpointer]:
            if conn is not None:
                conn.close()
        self._writer = None
        self._readers = []
        self._checkpointer = None

    # ------------------------------------------------------------ writing

    async def _submit(self, unit: _Unit) -> Any:
        while len(self._pending) >= MAX_PENDING:
            self._room.clear()
            await self._room.wait()
        self._pending.append(unit)
        self._wakeup.set()
        if unit.future is not None:
            return await unit.future
        return None

    async def write(
        self,
        owner: str,
        fn: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        return await self._submit(_Unit(owner, None, None, False, fn, fut, on_commit))

    async def execute(self, owner: str, sql: str, params: Sequence[Any] = ()) -> None:
        await self._submit(_Unit(owner, sql, tuple(params), False, None, None))

    async def queue(self, owner: str, fn: Callable[[sqlite3.Connection], Any]) -> None:
        await self._submit(_Unit(owner, None, None, False, fn, None))

    async def executemany(self, owner: str, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._submit(_Unit(owner, sql, list(rows), True, None, None))

    def take_errors(self, owner: str) -> list[BaseException]:
        return self._owner_errors.pop(owner, [])

    # ------------------------------------------------------------ reading

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` with a reader connection in a worker thread (committed data only)."""
        async with self._reader_limiter:
            conn = self._readers.pop()
            try:
                return await anyio.to_thread.run_sync(fn, conn)
            except sqlite3.Error as exc:
                raise StoreError(f"database read failed: {exc}") from exc
            finally:
                self._readers.append(conn)

    async def release_memory(self) -> None:
        """Give back every connection's page cache (``PRAGMA shrink_memory``).

        Pages a burst or a long read brought in stay cached per connection (up to
        ``WRITER_CACHE_KIB`` for the writer, sqlite's default 2 MiB for the others)
        until released; an idle daemon does not need them.
        """
        if self._writer is not None:
            async with self._writing:
                await anyio.to_thread.run_sync(_shrink, self._writer)
        for _ in range(len(self._readers)):
            async with self._reader_limiter:
                conn = self._readers.pop(0)
                try:
                    await anyio.to_thread.run_sync(_shrink, conn)
                finally:
                    self._readers.append(conn)

    def read_sync(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read on the writer connection, for start-up code that runs before the writer task."""
        return self._require_writer().execute(sql, params).fetchall()

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError("the database is not open")
        return self._writer

    def handle(self, owner: str) -> StoreHandle:
        return StoreHandle(self, owner)


class StoreHandle:
    """One owner's (a plugin's) access to the database: ``daemon.store``.

    Writes are queued and committed in batches; the daemon commits everything a hook
    queued before that plugin's journal cursor moves past the event, so a write made in
    an event hook is never lost to a crash without the event being delivered again.
    Reads see committed data: call ``flush()`` first to read your own queued writes.
    """

    def __init__(self, store: Store, owner: str) -> None:
        self._store = store
        self.owner = owner

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one write statement."""
        await self._store.execute(self.owner, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Queue one statement for many parameter rows."""
        await self._store.executemany(self.owner, sql, rows)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer connection inside the next batch (atomically,
        in a savepoint) and return its result once committed."""
        return await self._store.write(self.owner, fn)

    async def queue(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue ``fn(conn)`` to run on the writer connection inside the next batch
        (atomically, in a savepoint) without waiting for it, like ``execute`` queues a
        statement: several statements that read what they update, in one unit. Its
        failure is raised by the next ``flush()``."""
        await self._store.queue(self.owner, fn)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read query on committed data."""
        return await self._store.read(lambda c: c.execute(sql, params).fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of a read query on committed data, or None."""
        return await self._store.read(lambda c: c.execute(sql, params).fetchone())

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` with a reader connection (committed data; for streaming or
        several queries at once)."""
        return await self._store.read(fn)

    async def flush(self) -> None:
        """Wait until this owner's queued writes are committed; raise ``StoreError`` if
        any of them failed since the last flush."""
        await self._store.flush()
        errors = self._store.take_errors(self.owner)
        if errors:
            raise errors[0]


def _split_sql(script: str) -> list[str]:
    """Split a migration script into complete statements (sqlite3.complete_statement aware)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
