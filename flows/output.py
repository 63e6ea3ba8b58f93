"""Writing run outputs (DESIGN.md section 4), each file atomically.

Every file is written under a temporary name in the same folder and renamed into place, so a
reader (or a rerun after a kill) never mistakes a partial file for a complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import polars as pl

from flows.records import Dialogue, Reject, Seed

REJECT_SCHEMA = {
    "stage": pl.String,
    "reason": pl.String,
    "source": pl.String,
    "location": pl.String,
    "seed_id": pl.String,
    "detail": pl.String,
}


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside target; rename it onto target only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(target: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def dataset_rows(dialogues: list[Dialogue], seeds_by_id: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for d in dialogues:
        row = d.model_dump(mode="json", by_alias=True)
        seed = seeds_by_id.get(d.seed_id)
        row["question"] = seed.question if seed else None
        row["reference"] = seed.reference if seed else None
        row["provenance"] = json.dumps(row["provenance"], sort_keys=True)
        rows.append(row)
    return rows


def write_dataset(out: Path, rows: list[dict[str, Any]]) -> None:
    """dataset.parquet (all columns), dataset.jsonl (ShareGPT) and messages.jsonl (OpenAI)."""
    datasets.disable_progress_bars()
    with atomic_path(out / "dataset.parquet") as tmp:
        datasets.Dataset.from_list(rows).to_parquet(str(tmp))
    write_jsonl(
        out / "dataset.jsonl",
        [
            {
                "conversations": r["conversations"],
                "seed_id": r["seed_id"],
                "scenario": r["scenario"],
                "source": r["source"],
            }
            for r in rows
        ],
    )
    write_jsonl(
        out / "messages.jsonl",
        [{"messages": r["messages"], "seed_id": r["seed_id"]} for r in rows],
    )


def write_seeds(out: Path, seeds: list[Seed]) -> None:
    rows = [{**s.model_dump(), "meta": json.dumps(s.meta, sort_keys=True)} for s in seeds]
    schema = {k: pl.String for k in ("id", "source", "domain", "question", "reference", "meta")}
    with atomic_path(out / "seeds.parquet") as tmp:
        pl.DataFrame(rows, schema=schema).write_parquet(tmp)


def write_rejects(out: Path, rejects: list[Reject]) -> None:
    frame = pl.DataFrame([r.model_dump() for r in rejects], schema=REJECT_SCHEMA)
    with atomic_path(out / "rejects.parquet") as tmp:
        frame.write_parquet(tmp)
