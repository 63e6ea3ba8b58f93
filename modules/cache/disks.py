"""diskcache disks that never unpickle, and values sealed to their keys: what every cache
of the project (LM calls, dialogues, verdicts, runs, vectors, partners) stores through."""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

import diskcache
import orjson

from modules.cache.canonical import canonical_json, orjson_exact


def seal(key: str, body: Any) -> str:
    """A checksum binding an entry's content to its key: a damaged value, a hand-edited one
    or one moved under another key no longer matches, and is recomputed instead of trusted."""
    return hashlib.sha256(f"{key}\x1f{canonical_json(body)}".encode()).hexdigest()[:32]


def read_value(cache: diskcache.Cache, key: Any) -> Any:
    """A cache value, or None if it is missing or unreadable (then it is dropped, so the next
    write replaces it). Values are JSON (SafeJSONDisk): reading one never runs code."""
    try:
        return cache.get(key)
    except (zlib.error, ValueError, UnicodeDecodeError, OSError):
        cache.delete(key)
        return None


def read_checked(cache: diskcache.Cache, key: str, field: str) -> dict[str, Any] | None:
    """A cache value, or None if it is missing, unreadable or fails its checksum."""
    value = read_value(cache, key)
    if not isinstance(value, dict) or value.get("check") != seal(key, value.get(field)):
        return None
    return value


class _RefusesPickles:
    """Never unpickles anything. diskcache keeps a mode and a raw flag beside each row, and
    its base Disk unpickles rows marked as pickles: a row edited in the SQLite file (a shared
    cache folder is writable by others) would run code on read. We never store pickles, so a
    row claiming to be one is refused as damaged."""

    REFUSED_KEY = "!refused: a key stored as a pickle"

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            return self.REFUSED_KEY  # listed as unknown, never unpickled
        return super().get(key, raw)  # type: ignore[misc]

    @staticmethod
    def _refuse_pickle(mode: int) -> None:
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("a cache value stored as a pickle: refused")

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        self._refuse_pickle(mode)
        return super().fetch(mode, filename, value, read)  # type: ignore[misc]


class SafeJSONDisk(_RefusesPickles, diskcache.JSONDisk):
    """JSONDisk (keys and values as compressed JSON) that never unpickles.

    Values are written and read by orjson (the writer thread holds the GIL while it
    serialises, and the loop waits on it); a value orjson would write differently (NaN, a
    tuple) is written by json as before, and what orjson cannot read (NaN) is read by json.
    Keys stay json.dumps' text: they are what a row is looked up by."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or not orjson_exact(value):
            return super().store(value, read, key=key)
        data = zlib.compress(orjson.dumps(value), self.compress_level)
        return diskcache.Disk.store(self, data, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        self._refuse_pickle(mode)
        data = diskcache.Disk.fetch(self, mode, filename, value, read)
        if read:
            return data
        text = zlib.decompress(data)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)


class SafeBytesDisk(_RefusesPickles, diskcache.Disk):
    """Text keys and bytes values stored as they are: no JSON, no compression (what an
    embedding vector needs: it does not compress, and encoding it cost more than the write).
    Anything else is refused rather than pickled."""

    def put(self, key: Any) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"a {type(key).__name__} key: only text keys are stored")
        return super().put(key)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, bytes) or read:
            raise TypeError(f"a {type(value).__name__} value: only bytes are stored")
        return super().store(value, read, key=key)
