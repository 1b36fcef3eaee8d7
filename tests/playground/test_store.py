"""The history on disk: schema versions and migrations, runs and evaluations, filters, concurrent writers."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from playground.history import Output, RunRecord
from playground.store import SCHEMA_VERSION, HistoryStore, StoreError

IMAGE = {"name": "d.png", "mime": "image/png", "bytes": 4, "width": 2, "height": 2, "sha256": "ab" * 32,
         "thumbnail": None}


def run(adapters: list[str | None], started_at: str = "2026-12-01T10:00:00Z", image: dict | None = None) -> RunRecord:
    labels = ["A", "B"] if len(adapters) == 2 else ["output"]
    return RunRecord(id=0, mode="ab" if len(adapters) == 2 else "single", worker="ws://w",
                     settings={"prompt": "p", "seed": 7}, image=image, started_at=started_at,
                     outputs=[Output(label, adapter, text="t", status="done") for label, adapter in
                              zip(labels, adapters)])


def test_a_new_history_has_the_current_schema_in_wal_mode(tmp_path):
    """A fresh directory gets the database at the current schema version, in WAL mode."""
    store = HistoryStore(tmp_path / "h")
    assert store.schema_version() == SCHEMA_VERSION == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert HistoryStore(tmp_path / "h").schema_version() == SCHEMA_VERSION  # opening again changes nothing


def test_a_version_1_history_is_migrated_and_keeps_its_runs(tmp_path):
    """A history written at schema 1 (runs only) opens at the current version with its runs intact."""
    old = HistoryStore(tmp_path, migrate_to=1)
    assert old.schema_version() == 1
    run_id = old.add_run(run(["demo-a"]))
    store = HistoryStore(tmp_path)
    assert store.schema_version() == SCHEMA_VERSION
    restored = store.run(run_id)
    assert restored is not None and restored.outputs[0].adapter == "demo-a"
    assert store.list_entries(kind="evaluation") == []  # the evaluation tables exist now


def test_a_history_from_a_newer_playground_is_refused(tmp_path):
    """A schema version above this playground's is refused with a message that says what to do."""
    HistoryStore(tmp_path)
    with sqlite3.connect(tmp_path / "history.sqlite3") as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this playground's"):
        HistoryStore(tmp_path)


def test_an_unusable_directory_is_a_store_error(tmp_path):
    """A history directory that cannot be created gives a StoreError naming the path."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open the history at"):
        HistoryStore(tmp_path / "file" / "h")


def test_runs_round_trip_with_their_images(tmp_path):
    """A run comes back equal, with its id assigned by the store; its image is kept once for repeats."""
    store = HistoryStore(tmp_path)
    record = run(["demo-a", None], image=IMAGE)
    run_id = store.add_run(record, b"\x89PNG")
    assert run_id == record.id == 1
    record.outputs[1].status, record.verdict = "error", "a"
    store.update_run(record)
    restored = store.run(run_id)
    assert restored == record and restored.status == "error"
    assert store.image(IMAGE["sha256"]) == b"\x89PNG"
    store.add_run(run(["demo-b"], image=IMAGE), b"\x89PNG")
    assert store.image("missing") is None and store.run(99) is None


def test_entries_filter_by_adapter_and_date(tmp_path):
    """The list is newest first; the adapter filter matches either side; dates are whole days, both ends in."""
    store = HistoryStore(tmp_path)
    first = store.add_run(run(["demo-a"], "2026-11-30T23:59:59Z"))
    second = store.add_run(run(["demo-b", None], "2026-12-01T00:00:00Z"))
    third = store.add_run(run([None], "2026-12-02T12:00:00Z"))
    assert [e.id for e in store.list_entries()] == [third, second, first]
    assert [e.id for e in store.list_entries(adapter="base model")] == [third, second]
    assert [e.id for e in store.list_entries(adapter="demo-a")] == [first]
    assert [e.id for e in store.list_entries(since="2026-12-01")] == [third, second]
    assert [e.id for e in store.list_entries(until="2026-12-01")] == [second, first]
    assert [e.id for e in store.list_entries(since="2026-12-01", until="2026-12-01")] == [second]
    entry = store.list_entries(adapter="demo-b")[0]
    assert (entry.kind, entry.mode, entry.adapters, entry.title) == ("run", "ab", ("demo-b", "base model"),
                                                                     "A/B · demo-b vs base model")
    assert store.adapters() == ["base model", "demo-a", "demo-b"]
    assert [r.id for r in store.runs(adapter="demo-b")] == [second]


def test_evaluations_round_trip(tmp_path):
    """An evaluation's header and items come back in order; an item update and a status change are kept."""
    store = HistoryStore(tmp_path)
    header = {"created_at": "2026-12-01T10:00:00Z", "status": "running", "items_total": 2, "items_done": 0,
              "adapters": {"A": {"label": "demo-a"}, "B": {"label": "base model"}}}
    items = [({"position": p, "image": {**IMAGE, "sha256": f"{p}" * 64}, "verdict": None}, bytes([p]))
             for p in range(2)]
    eval_id = store.add_evaluation(header, items)
    store.update_eval_item(eval_id, {**items[1][0], "verdict": "tie"})
    store.update_evaluation({**header, "id": eval_id, "status": "interrupted"}, "2026-12-01T10:05:00Z")
    got = store.evaluation(eval_id)
    assert got is not None
    assert got[0]["status"] == "interrupted" and [i["verdict"] for i in got[1]] == [None, "tie"]
    assert store.image("1" * 64) == b"\x01"
    [entry] = store.list_entries(status="interrupted")
    assert (entry.kind, entry.id, entry.adapters) == ("evaluation", eval_id, ("demo-a", "base model"))
    assert store.list_entries(adapter="demo-b") == []
    store.delete_evaluation(eval_id)
    assert store.evaluation(eval_id) is None


def test_concurrent_sessions_write_without_losing_or_locking(tmp_path):
    """Eight sessions (threads, each with its own store and connections) add runs at once: none lost, ids unique."""
    HistoryStore(tmp_path)
    errors: list[BaseException] = []
    ids: list[int] = []
    lock = threading.Lock()

    def session(n: int) -> None:
        try:
            store = HistoryStore(tmp_path)
            for i in range(15):
                run_id = store.add_run(run([f"adapter-{n}"], f"2026-12-01T10:00:{i:02d}Z"))
                store.list_entries(limit=5)
                with lock:
                    ids.append(run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ids) == list(range(1, 121))
    assert len(HistoryStore(tmp_path).list_entries(limit=1000)) == 120
