"""The producer's local spool: where captures wait while Redis does not answer.

``capture()`` must not fail a web request because Redis is down or slow, and
must not drop an event either. When the LPUSH fails (or Redis failed a moment
ago and is in its short back-off) the events go to a SQLite database
on local disk instead: WAL mode, ``synchronous=FULL`` (each commit is fsynced,
so a spooled capture survives a crash of the host), bounded by
``FORWARDER_SPOOL_MAX_MB`` through SQLite's own ``max_page_count`` (past it
the insert fails and ``capture()`` raises :class:`SpoolFull`).

Draining is safe from any number of processes at once:

1. claim: one ``BEGIN IMMEDIATE`` transaction marks the oldest rows with a
   fresh claim token (or retakes a batch whose claim went stale, keeping its
   token);
2. push: one Lua script (``spool_push.lua``) sets ``{ns}:spooled:{token}``
   with NX and, only if it was not set before, requeues the batch, oldest first;
3. delete the batch's rows.

A producer that dies between 2 and 3 leaves its rows claimed; whoever retakes
them after ``CLAIM_STALE_SECONDS`` pushes with the same token, the script sees
the marker and pushes nothing, so no spooled event is queued twice. The one
remaining duplicate source is an LPUSH that timed out on the producer's side
after Redis had executed it: that event is both queued and spooled, and the
worker's delivered-id dedupe keeps Distinct from seeing it twice.

No thread: draining happens a little at a time on ``capture()`` calls once
Redis answers again, and all at once with ``distinct-forwarder spool flush``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from forwarder import constants as C
from forwarder.config import Settings
from forwarder.errors import SpoolFull
from forwarder.messages import upgrade_item
from forwarder.scripts import script
from forwarder.store import Store

log = logging.getLogger("distinct_forwarder.spool")
T = TypeVar("T")

#: A claim older than this is presumed dead (its producer crashed) and retaken.
CLAIM_STALE_SECONDS = 30.0
#: How long the "this batch was pushed" marker lives in Redis: far longer than
#: any claim can stay stale while producers run on the host.
PUSHED_MARKER_TTL = 24 * 3600
#: Messages per claim (one SQLite transaction, one Lua call).
DRAIN_BATCH = 100
#: SQLite waits this long for another process's write lock (held for ms).
BUSY_TIMEOUT_MS = 5000


_SPOOL_PUSH = script("spool_push")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  namespace TEXT NOT NULL,
  created REAL NOT NULL,
  events INTEGER NOT NULL,
  message TEXT NOT NULL,
  claimed_by TEXT,
  claimed_at REAL
);
CREATE INDEX IF NOT EXISTS spool_claim ON spool (claimed_by);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def default_spool_path(namespace: str, environ: dict[str, str] | None = None) -> str:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/distinct-forwarder/spool-<namespace>.db``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "distinct-forwarder", f"spool-{namespace}.db")


def spool_path_for(settings: Settings) -> str | None:
    """The spool file ``settings`` name, or None when the spool is turned off."""
    if settings.spool_path is None:
        return default_spool_path(settings.namespace)
    if settings.spool_path.strip().lower() in {"off", "none", "disabled"}:
        return None
    return os.path.expanduser(settings.spool_path)


@dataclass(frozen=True)
class SpoolStatus:
    path: str
    messages: int
    events: int
    claimed: int
    oldest: float | None
    size_bytes: int
    max_bytes: int
    full_rejections: int
    #: Spool files found corrupted and moved aside (their events need a person).
    quarantined: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == 13 or "full" in str(exc).lower()  # 13: SQLITE_FULL


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    # 11: SQLITE_CORRUPT, 26: SQLITE_NOTADB
    return code in (11, 26) or "malformed" in text or "not a database" in text


def _private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parent with mode 0700 (mkdir's parents
    would get the default 0755)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


class Spool:
    """One SQLite spool file, shared by every producer process of a user on a host."""

    def __init__(self, path: str, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.RLock()

    @classmethod
    def for_settings(cls, settings: Settings) -> Spool | None:
        path = spool_path_for(settings)
        if path is None:
            return None
        return cls(path, int(settings.spool_max_mb * 1024 * 1024))

    # --- connection --------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        # A connection must not cross a fork: reopen in the child.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        _private_dirs(Path(self.path).parent)
        # The file exists, 0600, before SQLite opens it: its -wal and -shm
        # files take the same mode, so no byte of an event (emails) is ever
        # readable by another user, not even for a moment. An older spool
        # keeps working and is made private below.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(self.path + suffix, 0o600)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count={max(32, self.max_bytes // page_size)}")
        conn.execute(f"PRAGMA journal_size_limit={16 * 1024 * 1024}")
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _guarded(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` on the database; a corrupted file is moved aside once
        and the operation runs again on a fresh spool."""
        with self._lock:
            try:
                return operation(self._db())
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                self._quarantine(exc)
                return operation(self._db())

    def _quarantine(self, exc: sqlite3.Error) -> None:
        """Move a corrupted spool (and its -wal, -shm) aside; a fresh one starts."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.path[:-3] if self.path.endswith('.db') else self.path}.corrupt-{stamp}.db"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path + suffix, aside + suffix)
        log.error("the spool %s is corrupted (%s); moved it to %s and started a fresh one. "
                  "Events in it could not be read: see `distinct-forwarder spool status`",
                  self.path, exc, aside)

    def quarantined(self) -> tuple[str, ...]:
        """Corrupted spool files moved aside next to this one."""
        base = Path(self.path)
        stem = base.name[:-3] if base.name.endswith(".db") else base.name
        return tuple(sorted(str(p) for p in base.parent.glob(f"{stem}.corrupt-*.db")))

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # --- writing -------------------------------------------------------------
    def put(self, items: Sequence[str], namespace: str, now: float | None = None) -> None:
        """Store events durably (fsynced) or raise SpoolFull / sqlite3.Error."""
        created = time.time() if now is None else now
        rows = [(namespace, created, 1, item) for item in items]

        def insert(db: sqlite3.Connection) -> None:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO spool (namespace, created, events, message) "
                               "VALUES (?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if not _is_full(exc):
                    raise
                self._count_full(db)
                raise SpoolFull(
                    f"the producer spool {self.path} is full "
                    f"(FORWARDER_SPOOL_MAX_MB={self.max_bytes / 1048576:g}) and Redis did "
                    "not take the event; it was not accepted"
                ) from None

        self._guarded(insert)

    def _count_full(self, db: sqlite3.Connection) -> None:
        # Best effort: an UPDATE of one existing row needs no new page.
        with contextlib.suppress(sqlite3.Error):
            db.execute("INSERT INTO meta (key, value) VALUES ('full_rejections', 1) "
                       "ON CONFLICT(key) DO UPDATE SET value = value + 1")

    # --- draining ------------------------------------------------------------
    def claim(self, namespace: str, limit: int, now: float | None = None
              ) -> tuple[str, list[tuple[int, str]]]:
        """Claim the oldest batch: a stale claim (same token) first, else fresh rows."""
        now = time.time() if now is None else now

        def take(db: sqlite3.Connection) -> tuple[str, list[Any]]:
            db.execute("BEGIN IMMEDIATE")
            try:
                stale = db.execute(
                    "SELECT claimed_by FROM spool WHERE namespace = ? AND claimed_by IS NOT NULL"
                    " AND claimed_at < ? ORDER BY seq LIMIT 1",
                    (namespace, now - CLAIM_STALE_SECONDS)).fetchone()
                if stale:
                    token = str(stale[0])
                    db.execute("UPDATE spool SET claimed_at = ? WHERE claimed_by = ?",
                               (now, token))
                else:
                    token = uuid.uuid4().hex
                    db.execute(
                        "UPDATE spool SET claimed_by = ?, claimed_at = ? WHERE seq IN ("
                        " SELECT seq FROM spool WHERE namespace = ? AND claimed_by IS NULL"
                        " ORDER BY seq LIMIT ?)", (token, now, namespace, limit))
                rows = db.execute("SELECT seq, message FROM spool WHERE claimed_by = ? "
                                  "ORDER BY seq", (token,)).fetchall()
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            return token, rows

        token, rows = self._guarded(take)
        return token, [(int(s), str(m)) for s, m in rows]

    def delete(self, token: str) -> None:
        self._guarded(lambda db: db.execute("DELETE FROM spool WHERE claimed_by = ?", (token,)))

    def expire_claim(self, token: str) -> None:
        """Make a batch's claim stale at once, keeping its token: the next drain
        retakes it, and its marker in Redis says whether it was pushed."""
        self._guarded(lambda db: db.execute(
            "UPDATE spool SET claimed_at = 0 WHERE claimed_by = ?", (token,)))

    def has_rows(self, namespace: str) -> bool:
        if not self.exists():
            return False
        row = self._guarded(lambda db: db.execute(
            "SELECT 1 FROM spool WHERE namespace = ? LIMIT 1", (namespace,)).fetchone())
        return row is not None

    def status(self, namespace: str) -> SpoolStatus:
        if not self.exists():
            return SpoolStatus(self.path, 0, 0, 0, None, 0, self.max_bytes, 0,
                               self.quarantined())

        def read(db: sqlite3.Connection) -> tuple[Any, ...]:
            count, events, claimed, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(events), 0), COUNT(claimed_by), MIN(created) "
                "FROM spool WHERE namespace = ?", (namespace,)).fetchone()
            full = db.execute("SELECT value FROM meta WHERE key = 'full_rejections'").fetchone()
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            return count, events, claimed, oldest, full, pages * page_size

        count, events, claimed, oldest, full, size = self._guarded(read)
        return SpoolStatus(self.path, int(count), int(events), int(claimed),
                           float(oldest) if oldest is not None else None, size,
                           self.max_bytes, int(full[0]) if full else 0, self.quarantined())


@dataclass
class DrainResult:
    messages: int = 0
    #: Batches found already pushed (a producer died before deleting them).
    already_queued: int = 0
    more: bool = False


def drain(spool: Spool, store: Store, *, max_messages: int | None = None,
          budget: float | None = None, batch: int = DRAIN_BATCH,
          on_progress: Callable[[int], None] | None = None) -> DrainResult:
    """Move spooled events into the queue, oldest first; Redis errors propagate.

    ``on_progress`` is called with the number of rows each batch took off the spool.
    """
    marker = C.key(store.namespace, C.SPOOLED_PREFIX)
    deadline = None if budget is None else time.monotonic() + budget
    result = DrainResult()
    while True:
        if max_messages is not None and result.messages >= max_messages:
            result.more = True
            return result
        if deadline is not None and time.monotonic() > deadline:
            result.more = True
            return result
        token, rows = spool.claim(store.namespace, batch)
        if not rows:
            return result
        # A row a 0.1 producer spooled holds a Celery message: its events go as events.
        items = [item for _, row in rows for item in upgrade_item(row)]
        try:
            pushed = int(_SPOOL_PUSH(store.client, queue=store.queue_key, marker=marker + token,
                                     marker_ttl=PUSHED_MARKER_TTL, rest=items))
        except BaseException:
            # Not known whether Redis ran it: the marker decides on the next try.
            spool.expire_claim(token)
            raise
        spool.delete(token)
        if pushed < 0:
            result.already_queued += 1
        else:
            result.messages += pushed
        if on_progress is not None:
            on_progress(len(rows))
