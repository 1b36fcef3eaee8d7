"""The playground's history on disk: runs and set evaluations in one SQLite file, shared by every session.

    store = HistoryStore(Path("~/.local/share/inference-worker/playground").expanduser())
    run_id = store.add_run(record, image_bytes)
    store.list_entries(adapter="demo-a", since="2026-12-01")

- One file, ``history.sqlite3``, in the history directory (``PLAYGROUND_HISTORY_DIR``), in WAL mode: readers never
  wait for the writer; writers wait for each other (``busy_timeout``) instead of failing. Every call opens its own
  connection, so Streamlit's script threads and several playground processes can share the file.
- Versioned schema: ``schema_version`` holds the version; :data:`MIGRATIONS` take an older file to the current one
  inside one ``BEGIN IMMEDIATE`` transaction (two processes starting together migrate once). A file written by a newer
  playground is refused rather than guessed at.
- Images are kept once per content digest (``blobs``), so a run can be repeated and an evaluation resumed after a
  restart. Records are JSON; the columns beside them are what the history view filters and sorts on.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from .history import RunRecord

DB_NAME = "history.sqlite3"
BUSY_TIMEOUT_S = 30.0

MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            mode TEXT NOT NULL,
            status TEXT NOT NULL,
            image_sha256 TEXT,
            record TEXT NOT NULL
        );
        CREATE INDEX runs_created_at ON runs (created_at);
        CREATE TABLE run_adapters (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            adapter TEXT NOT NULL
        );
        CREATE INDEX run_adapters_adapter ON run_adapters (adapter);
    """,
    2: """
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            status TEXT NOT NULL,
            adapter_a TEXT NOT NULL,
            adapter_b TEXT NOT NULL,
            header TEXT NOT NULL
        );
        CREATE INDEX evaluations_created_at ON evaluations (created_at);
        CREATE TABLE eval_items (
            eval_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            image_sha256 TEXT NOT NULL,
            item TEXT NOT NULL,
            PRIMARY KEY (eval_id, position)
        );
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


class StoreError(Exception):
    """The history cannot be opened or written (a message for people; the playground keeps working without it)."""


@dataclass(frozen=True)
class Entry:
    """One line of the history list: a run or a set evaluation."""

    kind: str  # "run" or "evaluation"
    id: int
    created_at: str
    mode: str  # single, ab, evaluation
    status: str
    adapters: tuple[str, ...]  # labels ("base model" for none), A first
    title: str  # what the list shows after the kind and id


class HistoryStore:
    def __init__(self, directory: Path, *, migrate_to: int = SCHEMA_VERSION) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory / DB_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            self._migrate(migrate_to)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the history at {self.path}: {exc}") from None

    # ---- connections and schema ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (BEGIN IMMEDIATE) so that concurrent writers queue up cleanly."""
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the history at {self.path}: {exc}") from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            with self._connect() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the history at {self.path}: {exc}") from None

    def _migrate(self, target: int) -> None:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                current = row[0] if row else 0
                if current > SCHEMA_VERSION:
                    raise StoreError(f"the history at {self.path} has schema version {current}, newer than this "
                                     f"playground's {SCHEMA_VERSION}: upgrade the playground or use another "
                                     f"PLAYGROUND_HISTORY_DIR")
                for version in range(current + 1, target + 1):
                    for statement in MIGRATIONS[version].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                if row is None:
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (max(current, target),))
                elif target > current:
                    conn.execute("UPDATE schema_version SET version = ?", (target,))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def schema_version(self) -> int:
        return int(self._read("SELECT version FROM schema_version")[0][0])

    # ---- images -------------------------------------------------------------------------------------------------
    @staticmethod
    def _put_blob(conn: sqlite3.Connection, sha256: str, data: bytes) -> None:
        conn.execute("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)", (sha256, data))

    def image(self, sha256: str) -> bytes | None:
        rows = self._read("SELECT data FROM blobs WHERE sha256 = ?", (sha256,))
        return bytes(rows[0]["data"]) if rows else None

    # ---- runs ---------------------------------------------------------------------------------------------------
    def add_run(self, record: RunRecord, image: bytes | None = None) -> int:
        """Store a new run (its id is assigned here and set on the record); the image is kept for repeats."""
        sha = record.image["sha256"] if record.image else None
        with self._write() as conn:
            if image is not None and sha is not None:
                self._put_blob(conn, sha, image)
            cursor = conn.execute(
                "INSERT INTO runs (created_at, mode, status, image_sha256, record) VALUES (?, ?, ?, ?, '{}')",
                (record.started_at, record.mode, record.status, sha))
            record.id = int(cursor.lastrowid or 0)
            conn.execute("UPDATE runs SET record = ? WHERE id = ?", (json.dumps(record.to_dict()), record.id))
            conn.executemany("INSERT INTO run_adapters (run_id, adapter) VALUES (?, ?)",
                             [(record.id, o.adapter_label) for o in record.outputs])
        return record.id

    def update_run(self, record: RunRecord) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET status = ?, record = ? WHERE id = ?",
                         (record.status, json.dumps(record.to_dict()), record.id))

    def run(self, run_id: int) -> RunRecord | None:
        rows = self._read("SELECT record FROM runs WHERE id = ?", (run_id,))
        return RunRecord.from_dict(json.loads(rows[0]["record"])) if rows else None

    def runs(self, ids: Sequence[int] | None = None, *, adapter: str | None = None, since: date | str | None = None,
             until: date | str | None = None, limit: int = 500) -> list[RunRecord]:
        """Runs, oldest first: all of them, the given ids, or those matching the filters of :meth:`list_entries`."""
        if ids is None:
            ids = [e.id for e in self.list_entries(kind="run", adapter=adapter, since=since, until=until,
                                                   limit=limit)]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._read(f"SELECT record FROM runs WHERE id IN ({marks}) ORDER BY id", list(ids))
        return [RunRecord.from_dict(json.loads(r["record"])) for r in rows]

    def delete_run(self, run_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # ---- evaluations --------------------------------------------------------------------------------------------
    def add_evaluation(self, header: dict[str, Any], items: Sequence[tuple[dict[str, Any], bytes]]) -> int:
        """Store a new evaluation: its header (prompt, parameters, adapters…) and its items with their images."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO evaluations (created_at, updated_at, status, adapter_a, adapter_b, header) "
                "VALUES (?, ?, ?, ?, ?, '{}')",
                (header["created_at"], header["created_at"], header["status"], header["adapters"]["A"]["label"],
                 header["adapters"]["B"]["label"]))
            eval_id = int(cursor.lastrowid or 0)
            header["id"] = eval_id
            conn.execute("UPDATE evaluations SET header = ? WHERE id = ?", (json.dumps(header), eval_id))
            for item, data in items:
                self._put_blob(conn, item["image"]["sha256"], data)
                conn.execute("INSERT INTO eval_items (eval_id, position, image_sha256, item) VALUES (?, ?, ?, ?)",
                             (eval_id, item["position"], item["image"]["sha256"], json.dumps(item)))
        return eval_id

    def update_evaluation(self, header: dict[str, Any], updated_at: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE evaluations SET status = ?, updated_at = ?, header = ? WHERE id = ?",
                         (header["status"], updated_at, json.dumps(header), header["id"]))

    def update_eval_item(self, eval_id: int, item: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("UPDATE eval_items SET item = ? WHERE eval_id = ? AND position = ?",
                         (json.dumps(item), eval_id, item["position"]))

    def evaluation(self, eval_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The header and the items (in order) of an evaluation; None if there is no such evaluation."""
        try:
            with self._connect() as conn:
                conn.execute("BEGIN")  # one snapshot of the header and its items
                header = conn.execute("SELECT header FROM evaluations WHERE id = ?", (eval_id,)).fetchone()
                rows = conn.execute("SELECT item FROM eval_items WHERE eval_id = ? ORDER BY position",
                                    (eval_id,)).fetchall()
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the history at {self.path}: {exc}") from None
        if header is None:
            return None
        return json.loads(header["header"]), [json.loads(r["item"]) for r in rows]

    def delete_evaluation(self, eval_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM evaluations WHERE id = ?", (eval_id,))

    # ---- the history list ---------------------------------------------------------------------------------------
    def list_entries(self, *, kind: str | None = None, adapter: str | None = None, since: date | str | None = None,
                     until: date | str | None = None, status: str | None = None,
                     limit: int = 200) -> list[Entry]:
        """Runs and evaluations, newest first. ``adapter``: used on either side; ``since``/``until``: days (UTC),
        both included; ``status``: e.g. ``interrupted`` evaluations."""
        start = str(since) if since is not None else ""
        end = str(date.fromisoformat(str(until)) + timedelta(days=1)) if until is not None else "9999"
        entries: list[Entry] = []
        if kind in (None, "run"):
            sql = ("SELECT id, created_at, mode, status, record FROM runs WHERE created_at >= ? AND created_at < ?"
                   + (" AND id IN (SELECT run_id FROM run_adapters WHERE adapter = ?)" if adapter else "")
                   + (" AND status = ?" if status else "") + " ORDER BY id DESC LIMIT ?")
            params: list[Any] = [start, end, *([adapter] if adapter else []), *([status] if status else []), limit]
            for r in self._read(sql, params):
                record = json.loads(r["record"])
                labels = tuple(o.get("adapter") or "base model" for o in record.get("outputs", []))
                image = (record.get("image") or {}).get("name")
                title = (f"{'A/B' if r['mode'] == 'ab' else 'single'} · {' vs '.join(labels)}"
                         + (f" · {image}" if image else ""))
                entries.append(Entry("run", r["id"], r["created_at"], r["mode"], r["status"], labels, title))
        if kind in (None, "evaluation"):
            sql = ("SELECT id, created_at, status, adapter_a, adapter_b, header FROM evaluations "
                   "WHERE created_at >= ? AND created_at < ?"
                   + (" AND (adapter_a = ? OR adapter_b = ?)" if adapter else "")
                   + (" AND status = ?" if status else "") + " ORDER BY id DESC LIMIT ?")
            params = [start, end, *([adapter, adapter] if adapter else []), *([status] if status else []), limit]
            for r in self._read(sql, params):
                header = json.loads(r["header"])
                title = (f"set evaluation · {r['adapter_a']} vs {r['adapter_b']} · "
                         f"{header.get('items_done', 0)} of {header.get('items_total', 0)} items")
                entries.append(Entry("evaluation", r["id"], r["created_at"], "evaluation", r["status"],
                                     (r["adapter_a"], r["adapter_b"]), title))
        entries.sort(key=lambda e: e.created_at, reverse=True)
        return entries[:limit]

    def adapters(self) -> list[str]:
        """Every adapter label that appears in the history (for the filter)."""
        rows = self._read("SELECT adapter FROM run_adapters UNION SELECT adapter_a FROM evaluations "
                          "UNION SELECT adapter_b FROM evaluations")
        return sorted(r[0] for r in rows)
