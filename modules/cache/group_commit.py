"""Writes made on an event loop, committed together by a writer thread (GroupCommit)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import diskcache

from modules.cache.disks import read_checked


class GroupCommit:
    """Writes made on an event loop, committed together by a writer thread.

    A transaction per LM call, on the one thread that also drives every dialogue, costs that
    thread CPU on every call; committing batches on it stalls the loop, which every dialogue
    waiting on a response pays. Here a write made on a running loop is handed to a
    writer thread, which commits what has gathered every `delay` seconds in one transaction
    (SQLite and zlib let go of the GIL while they work); reads see pending writes at once.
    A write made outside a loop (threads, the CLI) is committed before it returns, as before.

    `close()` commits what is pending, so Ctrl-C and a cancelled flow keep every finished
    call; a kill -9 loses the writes not yet committed, which the next run recomputes: those
    of the last `delay` period and of the commit then under way, longer while other threads
    keep the writer from the GIL (benchmarks/decisions.md). A store is never half-written:
    each batch is one transaction. `first` are stores committed before this one: a stored
    dialogue's calls are always on disk before the dialogue is.

    The writer thread only gets the GIL when the loop lets go of it, so a loop that produces
    writes faster than they commit (a fast endpoint, the CPU saturated) would pile them up,
    memory growing with the run and a kill losing all of them. At `limit` pending writes the
    loop commits them itself before going on, which bounds both the memory and what a kill can
    lose."""

    def __init__(
        self,
        cache: diskcache.Cache,
        first: tuple[GroupCommit, ...] = (),
        delay: float = 0.1,
        limit: int = 1000,
    ) -> None:
        self.cache, self.first, self.delay, self.limit = cache, first, delay, limit
        self.pending: dict[str, Any] = {}
        self.writing: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards pending and writing
        self._commit = threading.Lock()  # one batch at a time, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, key: str) -> Any:
        """A value not yet committed (None if there is none: then read the cache itself)."""
        with self._lock:
            value = self.pending.get(key)
            return value if value is not None else self.writing.get(key)

    def read_checked(self, key: str, field: str) -> dict[str, Any] | None:
        """read_checked on the store, a pending value first (this run sealed it)."""
        pending = self.get(key)
        return pending if pending is not None else read_checked(self.cache, key, field)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self.pending[key] = value
            on_loop = _on_loop()
            if on_loop and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="master-cache-writer", daemon=True
                )
                self._thread.start()
            behind = len(self.pending) >= self.limit
        if not on_loop or behind:
            self.flush()

    def flush(self) -> None:
        """Commit everything pending (the stores in `first` before this one)."""
        for store in self.first:
            store.flush()
        with self._commit:
            with self._lock:
                if not self.pending:
                    return
                batch, self.pending = self.pending, {}
                self.writing = batch
            try:
                with self.cache.transact():
                    for key, value in batch.items():
                        self.cache.set(key, value)
            except BaseException:
                with self._lock:  # kept for the next attempt; newer values win
                    self.pending = {**batch, **self.pending}
                raise
            finally:
                with self._lock:
                    self.writing = {}

    def _run(self) -> None:
        while not self._stop.wait(self.delay):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - kept pending; close() raises it
                logging.getLogger("master").warning("cache write failed, retrying: %s", exc)
        self.cache.close()  # this thread's own SQLite connection

    def close(self) -> None:
        """Stop the writer thread and commit what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()
        self.flush()


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
