"""Finished dataset rows on disk until publish, so a run's memory does not grow with its size.

Each accepted row is appended to a JSON-lines file in the output folder as its dialogue
finishes; the run keeps only a `RowRef` per row (what merging needs:
the row's order key, seed and content digest, and where the line is). Publishing reads the
rows back in published order, a batch at a time.

The spill folder lives in the output folder, which the run holds locked, and is removed once
the dataset is written; a killed run's leftover folder is removed by the next run there.
Shards run elsewhere (Dask) each append to a file of their own, named in their `RowRef`s.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

SPILL_PREFIX = ".spill-"


class RowRef(NamedTuple):
    """One row to publish: how it sorts and dedupes, and where its content is.

    `where` is (file, offset, length) for a spilled row, or the Seed an original row
    (merge mode `mix`) is made from."""

    order: str
    seed_id: str
    digest: str
    where: Any


class RowSpill:
    """Appends rows to one JSON-lines file; opened on the first row, closed before pickling."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._fh: Any = None

    def add(self, row: dict[str, Any]) -> tuple[str, int, int]:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
            self.offset = self._fh.tell()
        line = json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"
        self._fh.write(line)
        where = (str(self.path), self.offset, len(line))
        self.offset += len(line)
        return where

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self) -> dict[str, Any]:
        self.close()  # a worker's spill travels to the parent as its path, flushed
        return self.__dict__.copy()


def read_rows(wheres: Iterable[tuple[str, int, int]]) -> Iterator[dict[str, Any]]:
    """The spilled rows at these places, in the order given (one open file per spill file)."""
    handles: dict[str, Any] = {}
    try:
        for path, offset, length in wheres:
            fh = handles.get(path)
            if fh is None:
                fh = handles[path] = open(path, "rb")  # noqa: SIM115 - closed below
            fh.seek(offset)
            yield json.loads(fh.read(length))
    finally:
        for fh in handles.values():
            fh.close()


def spill_folder(out: Path, name: str) -> Path:
    """A fresh spill folder in out, after removing any a killed run left there."""
    clear_spills(out)
    return out / f"{SPILL_PREFIX}{name}"


def clear_spills(out: Path) -> None:
    for old in out.glob(f"{SPILL_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)
