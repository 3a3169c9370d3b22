"""The SQLite database shared by zero-fuse, zero-worker and the CLI.

WAL mode lets readers run beside the one writer; a write transaction starts
with BEGIN IMMEDIATE so two processes never deadlock upgrading a read lock.
The transaction is the lock between the processes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, create_engine, event, exc, insert, select, update
from sqlalchemy.pool import QueuePool

from zero.errors import CacheFormatError, DatabaseBusy, DiskFull, StateUnavailable, ZeroError
from zero.state import changelog, schema
from zero.state.chunkstate import StateWriteGuard

BUSY_TIMEOUT_S = 60.0
BEGIN_RETRY_FIRST_S = 0.00005
BEGIN_RETRY_MAX_S = 0.002


class Database:
    """One engine per process; `write()` and `read()` hand out transactions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        url = f"sqlite:///{self.path}"
        self.engine = create_engine(url, poolclass=QueuePool, pool_size=8, max_overflow=32,
                                    connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
        event.listen(self.engine, "connect", self._on_connect)
        event.listen(self.engine, "begin", self._on_begin)
        # Write transactions get their own connections, whose busy handler is off
        # for good (see _on_begin_write): two PRAGMAs fewer per commit.
        self._write_engine = create_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=4,
                                           connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
        event.listen(self._write_engine, "connect", self._on_connect)
        event.listen(self._write_engine, "connect", self._no_busy_handler)
        event.listen(self._write_engine, "begin", self._on_begin_write)
        # Connections for single_read, outside SQLAlchemy's pool: a list, not a
        # thread-local, since a libfuse thread enters Python with a new thread
        # state on every call (a ctypes callback), which empties a thread-local.
        self._readers: list[sqlite3.Connection] = []
        self._disposed = False
        # Writers of this process queue here instead of in SQLite's busy handler,
        # which sleeps 1 ms and more per retry: a create racing the asynchronous
        # release of the previous file cost a millisecond each (measured). SQLite's
        # lock still orders this process against the other one.
        self._write_lock = threading.RLock()
        self._writer: Connection | None = None  # used only under _write_lock
        self._write_depth = 0  # write() blocks the lock's holder is in (more than one: nested)

    @staticmethod
    def _on_connect(dbapi_connection, _record) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE is ours to send.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a crash of either process; fsync paths call durable_checkpoint().
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()
        # chunks.state is written only by chunks.transition(); SQLite refuses any other statement.
        dbapi_connection.set_authorizer(StateWriteGuard.authorize)

    @staticmethod
    def _no_busy_handler(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 0")

    @staticmethod
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN DEFERRED")

    @staticmethod
    def _on_begin_write(connection: Connection) -> None:
        # Waiting for the other process's write transaction: SQLite's busy handler
        # sleeps 1, 2, 5, 10... ms between tries, while a transaction here lasts a
        # fraction of a millisecond, so zero-fuse lost most of its create rate to
        # those sleeps whenever the worker committed (measured). Retry BEGIN here
        # with short sleeps instead, with the same overall deadline.
        dbapi = connection.connection.driver_connection
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = BEGIN_RETRY_FIRST_S
        while True:
            try:
                dbapi.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, BEGIN_RETRY_MAX_S)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: commits on success, rolls back on an exception.
        A commit that finds the disk full raises DiskFull and changes nothing."""
        if not self._write_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise DatabaseBusy(f"another thread held the write lock on {self.path} for {BUSY_TIMEOUT_S:.0f}s")
        try:
            # One connection kept for the process's writes, which the lock above
            # serialises anyway: without the pool's checkout and return a write
            # transaction of one UPDATE takes 35 us instead of 53 (a create commits
            # once, tar x about five times a file; decision 84).
            if self._write_depth:
                # A write inside a write on this thread (the lock is re-entrant): refused
                # before it touches the connection, so the outer transaction stays whole.
                raise RuntimeError(f"a write transaction on {self.path} was begun inside another one")
            if self._writer is None:
                self._writer = self._write_engine.connect()
            writer = self._writer
            self._write_depth += 1
            try:
                with writer.begin():
                    yield writer
            except BaseException as error:
                # The transaction rolled back. After an error of SQLite's (I/O, a full
                # disk, a lock not had in time), an interrupt, or in any state but idle,
                # the connection goes now (one left in a transaction would hold SQLite's
                # lock) and the next write starts on a fresh one.
                if writer is self._writer and (not isinstance(error, Exception)
                                               or isinstance(error, (exc.DBAPIError, sqlite3.Error))
                                               or writer.invalidated or writer.in_transaction()
                                               or _sqlite_in_transaction(writer)):
                    self._drop_writer()
                raise
            finally:
                self._write_depth -= 1
        except (exc.DBAPIError, sqlite3.Error) as error:
            self._raise_failure(error, "the change was not saved")
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection:
                with connection.begin():
                    yield connection
        except (exc.DBAPIError, sqlite3.Error) as error:
            self._raise_failure(error, "nothing was changed")

    def _raise_failure(self, error: Exception, outcome: str) -> None:
        """Raise ``error`` as _failure's sentence, or as it is when it is zero's own."""
        failure = self._failure(error, outcome)
        if failure is None:
            raise error
        raise failure from error

    def _failure(self, error: Exception, outcome: str) -> ZeroError | None:
        """SQLite's error, when the cause is outside zero (the disk, a lock held too
        long, damage), as a sentence saying what happened and what to do; None
        for the others (a statement zero got wrong), which stay tracebacks."""
        original = getattr(error, "orig", error)
        code = getattr(original, "sqlite_errorcode", None)
        if code is None:
            if not (isinstance(original, sqlite3.OperationalError) and "locked" in str(original)):
                return None
            code = sqlite3.SQLITE_BUSY  # BEGIN IMMEDIATE retried until the deadline (_on_begin_write)
        primary = code & 0xFF
        if primary == sqlite3.SQLITE_FULL:
            return DiskFull(f"the disk holding {self.path} is full, so {outcome}; free space there "
                            "(zero-worker frees cache space as it uploads)")
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return DatabaseBusy(f"the cache's state database {self.path} stayed locked by another process for "
                                f"{BUSY_TIMEOUT_S:.0f}s, so {outcome}. A zero command (fsck --repair, gc) or a stuck "
                                f"zero-fuse or zero-worker holds it: try again once it is done")
        if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            what = (f"the cache's state database {self.path} is damaged ({original})" if primary == sqlite3.SQLITE_CORRUPT
                    else f"{self.path} is not an SQLite database zero can read ({original}): it was damaged, or it "
                         f"is not zero's")
            return StateUnavailable(
                f"{what}, so {outcome}. To get the filesystem back from its metadata backups in the remotes: stop "
                f"zero-fuse and zero-worker, move it aside (mv {self.path} {self.path}.damaged) and run: "
                f"zero restore <a new cache folder>")
        if primary in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
            return StateUnavailable(f"the cache's state database {self.path} could not be used ({original}), so "
                                    f"{outcome}. Check the disk holding it: that it is mounted read-write, its "
                                    f"permissions, and the kernel log (dmesg) for I/O errors")
        return None

    def single_read(self, sql: str, params: tuple = ()) -> tuple | None:
        """The first row of one read-only statement, outside any transaction:
        in SQLite a statement is its own snapshot, so a lookup needs no BEGIN
        and COMMIT. zero-fuse's lookups of names and inodes not in memory: a
        pooled transaction costs about 80 us of Python around SQLite's 10."""
        try:
            connection = self._readers.pop()
        except IndexError:
            try:
                connection = self._open_reader()
            except sqlite3.Error as error:
                self._raise_failure(error, "nothing was changed")
        try:
            cursor = connection.execute(sql, params)
            try:
                return cursor.fetchone()
            finally:
                cursor.close()  # resets the statement, which ends its read of the WAL
        except sqlite3.Error as error:
            # READONLY here is query_only refusing a statement that writes: zero's mistake, not the disk's.
            if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY:
                raise
            self._raise_failure(error, "nothing was changed")
        finally:
            if self._disposed:
                connection.close()
            else:
                self._readers.append(connection)

    def _open_reader(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            self._on_connect(connection, None)
            connection.execute("PRAGMA query_only = 1")
        except BaseException:
            connection.close()
            raise
        connection.row_factory = _named_row
        return connection

    def durable_checkpoint(self) -> None:
        """Make every committed transaction survive a power loss (for fsync).

        A checkpoint fsyncs the WAL before it copies frames into the database,
        but a PASSIVE one that a reader keeps from copying anything syncs
        nothing; so the WAL, where the commits are, is fsynced here too."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except (exc.DBAPIError, sqlite3.Error) as error:
            self._raise_failure(error, "what was written is not known to be on the disk")
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: the checkpoint put every commit into the (synced) database
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except exc.SQLAlchemyError:
                pass  # already broken; the pool discards it

    def dispose(self) -> None:
        self._disposed = True  # a single_read under way closes its connection itself
        idle, self._readers = self._readers, []
        for connection in idle:
            connection.close()
        # A write still under way at shutdown keeps its connection (closed with the process).
        if self._write_lock.acquire(timeout=BUSY_TIMEOUT_S):
            try:
                self._drop_writer()
            finally:
                self._write_lock.release()
        self._write_engine.dispose()
        self.engine.dispose()


def run(connection: Connection, sql: str, params: tuple = ()) -> sqlite3.Cursor:
    """One statement straight on SQLite's connection, inside the caller's transaction.
    For the statements every create and unlink runs: SQLAlchemy's own work around a
    statement (about 20 us) was two thirds of an unlink's transaction (decision 91).
    Rows come back as plain tuples; errors as sqlite3's (write() and read() turn
    them into sentences the same way)."""
    return connection.connection.driver_connection.execute(sql, params)


def run_many(connection: Connection, sql: str, params: list[tuple]) -> sqlite3.Cursor:
    """``run`` for one statement over many parameter tuples."""
    return connection.connection.driver_connection.executemany(sql, params)


def _sqlite_in_transaction(connection: Connection) -> bool:
    try:
        return bool(connection.connection.driver_connection.in_transaction)
    except exc.SQLAlchemyError:
        return True  # closed or invalid: not to be used again


@functools.lru_cache(maxsize=64)
def _row_class(names: tuple[str, ...]) -> type:
    return collections.namedtuple("Row", names, rename=True)  # a column named like a keyword still reads


def _named_row(cursor: sqlite3.Cursor, values: tuple) -> tuple:
    """Rows whose columns read as attributes, as SQLAlchemy's do."""
    return _row_class(tuple(column[0] for column in cursor.description))(*values)


def get_meta(connection: Connection, key: str) -> str | None:
    return connection.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).scalar()


def worker_status(connection: Connection) -> dict:
    """What zero-worker last published in its heartbeat (zero.worker.service);
    empty before it first ran."""
    return json.loads(get_meta(connection, "worker_status") or "{}")


def worker_settings(connection: Connection) -> dict:
    """The settings zero-worker last published (its heartbeat's ``settings``:
    the config keys people write, sizes in bytes); empty before it first ran,
    and for a heartbeat that does not parse (a read must not fail over it)."""
    try:
        settings = worker_status(connection).get("settings")
    except (ValueError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def set_meta(connection: Connection, key: str, value: str) -> None:
    updated = connection.execute(update(schema.meta).where(schema.meta.c.key == key).values(value=value))
    if updated.rowcount == 0:
        connection.execute(insert(schema.meta).values(key=key, value=value))


def open_database(path: Path, chunk_size_bytes: int | None = None, root_uid: int = 0,
                  root_gid: int = 0) -> Database:
    """Open the database, creating the filesystem if it is new.

    ``chunk_size_bytes`` is used only when formatting; an existing database keeps its own.
    """
    database = Database(path)
    try:
        return _open_or_format(database, path, chunk_size_bytes, root_uid, root_gid)
    except StateUnavailable:
        database.dispose()  # damaged, or not a database (decision 87): the sentence says what to do
        raise


def _open_or_format(database: Database, path: Path, chunk_size_bytes: int | None, root_uid: int,
                    root_gid: int) -> Database:
    with database.write() as connection:
        existing = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").scalar()
        if existing:
            version = int(get_meta(connection, "schema_version") or 0)
            if version > schema.SCHEMA_VERSION:
                database.dispose()
                raise CacheFormatError(
                    f"{path} was made by a newer zero (format {version}; this one reads up to "
                    f"{schema.SCHEMA_VERSION}); upgrade zero (pip install -U zero) to open it")
            if version < 1:
                database.dispose()
                raise CacheFormatError(f"{path} has unknown format {version}; it was not made by zero")
            if version < schema.SCHEMA_VERSION:
                _upgrade(connection, version)
            return database
        schema.metadata.create_all(connection)
        changelog.install_triggers(connection)
        now = time.time_ns()
        for key, value in {
            "schema_version": str(schema.SCHEMA_VERSION),
            "chunk_size": str(chunk_size_bytes or 4 * 1024 * 1024),
            "fs_id": uuid.uuid4().hex,
            # Keys for the codec: one names objects (keyed hash), one seals them.
            "hash_key": secrets.token_hex(32),
            "encryption_key": secrets.token_hex(32),
            "created_ns": str(now),
            # Names this cache in the writer lease (zero.meta.writer); a restore gets a new one.
            "writer_id": uuid.uuid4().hex,
        }.items():
            connection.execute(insert(schema.meta).values(key=key, value=value))
        connection.execute(insert(schema.inodes).values(
            ino=1, mode=0o040755, uid=root_uid, gid=root_gid, nlink=2, size=0,
            atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=0, target=None))
    return database


def _upgrade(connection: Connection, version: int) -> None:
    """Bring an older format up to date in the opening transaction. Every
    change so far added tables, which create_all adds and leaves the rest
    alone, or changed a changelog trigger."""
    schema.metadata.create_all(connection)
    changelog.install_triggers(connection)
    if version < 6:
        changelog.record_chunks_not_uploaded(connection)
    set_meta(connection, "schema_version", str(schema.SCHEMA_VERSION))


def format_settings(database: Database) -> dict[str, str]:
    with database.read() as connection:
        return {row.key: row.value for row in connection.execute(select(schema.meta))}
