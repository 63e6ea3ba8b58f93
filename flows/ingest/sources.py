"""Reading seed sources lazily, row by row, whatever their container.

JSONL is read line by line (so one bad line is one reject with its line number), Parquet and
CSV through polars scans in batches, Hugging Face datasets through `datasets` streaming; a JSON
array is the one container that must be parsed whole. Nothing here holds a whole source in
memory, so a million-row file loads in bounded memory.

Each reader yields ``(location, row)`` where row is a dict, or a ValueError saying why the row
could not be read; the caller turns those into rejects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

# polars is imported by the readers that scan with it: a JSONL source, the common case, is
# read without it and the first calls go out sooner (benchmarks/decisions.md, cold start).

Row = dict[str, Any] | ValueError

BATCH_ROWS = 10_000


class SeedSourceError(Exception):
    """A source that cannot be read at all (missing file, wrong shape): one line, no traceback."""


def _too_big(size: int, limit: int) -> ValueError:
    return ValueError(f"row of {size:,} bytes is over the {limit:,}-byte limit")


def read_jsonl(path: Path, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            loc = f"{path.name}:{lineno}"
            if len(raw) > max_row_bytes:
                yield loc, _too_big(len(raw), max_row_bytes)
                continue
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield loc, ValueError(f"invalid UTF-8 at byte {exc.start}")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield loc, ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            except RecursionError:
                yield loc, ValueError("JSON nested too deeply")
                continue
            yield (
                loc,
                row
                if isinstance(row, dict)
                else ValueError(f"row is a JSON {type(row).__name__}, expected an object"),
            )


# A JSON array is parsed whole, which takes several times its size in memory; past this size,
# the user is told to use JSON Lines.
MAX_JSON_ARRAY_BYTES = 256 * 1024 * 1024


def read_json_array(path: Path, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    size = path.stat().st_size
    if size > MAX_JSON_ARRAY_BYTES:
        raise SeedSourceError(
            f"{path}: a {size / 2**20:,.0f} MB JSON array is too large to parse in memory; "
            "convert it to JSON Lines (one object per line), which is streamed"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SeedSourceError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise SeedSourceError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise SeedSourceError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise SeedSourceError(f"{path}: expected a JSON array of objects")
    for i, row in enumerate(data):
        loc = f"{path.name}[{i}]"
        if not isinstance(row, dict):
            yield loc, ValueError(f"item is a JSON {type(row).__name__}, expected an object")
        elif len(json.dumps(row)) > max_row_bytes:
            yield loc, _too_big(len(json.dumps(row)), max_row_bytes)
        else:
            yield loc, row


def _read_frame(path: Path, frame: pl.LazyFrame, kind: str) -> Iterator[tuple[str, Row]]:
    """Batches of a polars scan as dict rows, numbered from 1 (header excluded)."""
    import polars as pl

    number = 0
    try:
        for batch in frame.collect_batches(chunk_size=BATCH_ROWS):
            for row in batch.iter_rows(named=True):
                number += 1
                yield f"{path.name}:row {number}", row
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeedSourceError(f"{path}: not a readable {kind} file ({first})") from None


def read_parquet(path: Path, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    del max_row_bytes  # Parquet rows are typed cells; size is checked on the mapped text
    import polars as pl

    try:
        frame = pl.scan_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise SeedSourceError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from _read_frame(path, frame, "Parquet")


def read_csv(path: Path, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    del max_row_bytes
    import polars as pl

    frame = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy", quote_char='"')
    for loc, row in _read_frame(path, frame, "CSV"):
        if isinstance(row, dict) and any(
            isinstance(v, str) and "\ufffd" in v for v in row.values()
        ):
            yield loc, ValueError("invalid UTF-8")
        else:
            yield loc, row


READERS = {
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".json": read_json_array,
    ".parquet": read_parquet,
    ".csv": read_csv,
}


def _sniff(path: Path) -> str:
    """What the file really is, from its first bytes, to catch a wrong extension early."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1"):
        return ".parquet"
    if b"\x00" in head:
        return "binary"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        return ".json"
    if text.startswith(b"{"):
        return ".jsonl"
    return ".csv"


def read_folder(folder: Path, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    """Every supported file under a folder, in path order; a file that cannot be read is
    quarantined as one reject with its reason, and the others are read."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SeedSourceError(f"{folder}: the folder holds no files")
    for path in files:
        rel = path.relative_to(folder).as_posix()
        try:
            for loc, row in read_file(path, max_row_bytes):
                yield (rel + loc[len(path.name) :] if loc.startswith(path.name) else loc), row
        except SeedSourceError as exc:
            reason = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}")
            yield rel, ValueError(f"file skipped: {reason.lstrip(':').strip()}")


def read_file(path: Path, max_row_bytes: int) -> Iterator[tuple[str, Row]]:
    """Rows of a seed file (or of every file in a folder), each with its location."""
    if not path.exists():
        raise SeedSourceError(f"{path}: seed file not found")
    if path.is_dir():
        yield from read_folder(path, max_row_bytes)
        return
    if not path.is_file():
        raise SeedSourceError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise SeedSourceError(
            f"{path}: unsupported file type {suffix or '(none)'} (use {', '.join(sorted(READERS))})"
        )
    actual = _sniff(path) if path.stat().st_size else suffix
    compatible = {".jsonl": {".jsonl", ".json"}, ".ndjson": {".jsonl", ".json"}}
    if actual == "binary" or (
        actual != suffix and actual not in compatible.get(suffix, set()) and suffix != ".csv"
    ):
        what = "binary data" if actual == "binary" else f"{actual.lstrip('.')} content"
        raise SeedSourceError(f"{path}: the file holds {what}, not {suffix.lstrip('.')}")
    if suffix == ".json" and actual == ".jsonl":
        yield from read_jsonl(path, max_row_bytes)  # JSON Lines saved as .json
        return
    yield from READERS[suffix](path, max_row_bytes)


def read_hub(
    dataset_id: str, config: str | None, split: str, max_row_bytes: int
) -> Iterator[tuple[str, Row]]:
    """A Hugging Face dataset, streamed; offline, one clear line says how to use a local copy."""
    import datasets

    try:
        stream = datasets.load_dataset(dataset_id, config, split=split, streaming=True)
        iterator = iter(stream)
        index = 0
        while True:
            try:
                row = next(iterator)
            except StopIteration:
                return
            index += 1
            yield f"{dataset_id}:{split}[{index - 1}]", row
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line at this boundary
        reason = " ".join(str(exc).split())[:160]
        raise SeedSourceError(
            f"hf:{dataset_id}: cannot be reached ({reason}); this machine may be offline: "
            "download it where the hub is reachable (datasets.load_dataset(...).to_json(...)) "
            "and point the source's `path:` at the local JSONL or Parquet file"
        ) from None
