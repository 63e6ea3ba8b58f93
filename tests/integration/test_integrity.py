"""Cache integrity: every value is JSON with a checksum bound to its key; a tampered, damaged
or moved entry is detected, discarded and recomputed, and the dataset is unchanged."""

from __future__ import annotations

import json
import pickle
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path

import diskcache

from conftest import role_lms
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.runs.cache_admin import cache_stats, prune
from flows.runs.pipeline import run_pipeline


def _call_keys(cache_dir: Path) -> list[str]:
    with diskcache.Cache(str(cache_dir), disk=diskcache.JSONDisk) as calls:
        return sorted(k for k in calls.iterkeys() if not str(k).startswith("slot:"))


def _drop_dialogues(cache_dir: Path) -> None:
    with diskcache.Cache(str(cache_dir / "dialogues"), disk=diskcache.JSONDisk) as store:
        store.clear()


def test_tampered_damaged_and_moved_entries_are_recomputed(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    # the per-entry caches are under test: no replay of the whole run
    cache = tmp_path / "cache"
    config = write_config(
        role_lms(fake_llm.base_url), sample=6, cache={"dir": str(cache), "replay_runs": False}
    )
    cfg = load_config(config, environ={})
    run_pipeline(cfg, tmp_path / "first", embedder=embedder)
    original = (tmp_path / "first" / "dataset.jsonl").read_bytes()
    with_verdicts = (tmp_path / "first" / "dataset.parquet").read_bytes()

    # 1. every whole-dialogue entry and every stored verdict edited by hand (checksum kept)
    with diskcache.Cache(str(cache / "dialogues"), disk=diskcache.JSONDisk) as store:
        for key in list(store.iterkeys()):
            value = store.get(key)
            if str(key).startswith("verdict:"):
                value["body"]["quality"]["judge_score"] = 5
            else:
                value["body"]["turns"][-1]["text"] = "I was edited."
            store.set(key, value)
    fake_llm.reset()
    run_pipeline(cfg, tmp_path / "second", embedder=embedder)
    assert fake_llm.request_count == 0  # re-simulated from the intact call cache
    assert (tmp_path / "second" / "dataset.jsonl").read_bytes() == original
    assert (tmp_path / "second" / "dataset.parquet").read_bytes() == with_verdicts

    # 2. one call's answer edited, one moved under another key, one damaged on disk
    keys = _call_keys(cache)
    edited, moved_from, moved_to, damaged = keys[0], keys[1], keys[2], keys[3]
    with diskcache.Cache(str(cache), disk=diskcache.JSONDisk) as calls:
        value = calls.get(edited)
        value["response"] = {**value["response"], "edited": "by hand"}
        calls.set(edited, value)
        calls.set(moved_to, calls.get(moved_from))
    db = sqlite3.connect(cache / "cache.db")
    rows = db.execute("SELECT rowid, key FROM Cache").fetchall()
    rowid = next(r for r, k in rows if json.loads(zlib.decompress(k)) == damaged)
    db.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (b"\x00not zlib", rowid))
    db.commit()
    db.close()
    _drop_dialogues(cache)
    fake_llm.reset()
    run_pipeline(cfg, tmp_path / "third", embedder=embedder)
    assert fake_llm.request_count == 3  # exactly the three bad entries, asked again
    assert (tmp_path / "third" / "dataset.jsonl").read_bytes() == original
    fake_llm.reset()
    _drop_dialogues(cache)
    run_pipeline(cfg, tmp_path / "fourth", embedder=embedder)
    assert fake_llm.request_count == 0  # and now stored soundly


class _Exploit:
    """A pickle that, once loaded, creates `marker`: what a hostile cache row would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.marker, "w"))


def test_the_cache_never_unpickles_what_it_reads(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    """Rows edited in the SQLite files to claim they are pickles (diskcache's base Disk would
    load them) are refused as damaged and recomputed; listing and pruning refuse them too."""
    cache = tmp_path / "cache"
    config = write_config(
        role_lms(fake_llm.base_url), sample=6, cache={"dir": str(cache), "replay_runs": False}
    )
    cfg = load_config(config, environ={})
    first = run_pipeline(cfg, tmp_path / "first", embedder=embedder).summary
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    stores = [cache, cache / "dialogues", cache / "vectors", cache / "retrieval"]
    assert all((store / "cache.db").is_file() for store in stores)
    for store in stores:
        db = sqlite3.connect(store / "cache.db")
        db.execute("UPDATE Cache SET mode = 4, filename = NULL, value = ?", (payload,))
        db.execute(
            "INSERT INTO Cache (key, raw, store_time, access_time, size, mode, value)"
            " VALUES (?, 0, 0, 0, 0, 1, NULL)",
            (payload,),
        )
        db.commit()
        db.close()
    fake_llm.reset()
    second = run_pipeline(cfg, tmp_path / "second", embedder=embedder).summary
    cache_stats(cache)
    prune(cache, unused=True)
    assert not marker.exists()
    assert fake_llm.request_count == first["lm"]["calls"] == second["lm"]["calls"]
    assert (tmp_path / "second" / "dataset.jsonl").read_bytes() == (
        tmp_path / "first" / "dataset.jsonl"
    ).read_bytes()
