"""Writing run outputs (DESIGN.md section 4), each file atomically.

Every file is written under a temporary name in the same folder and renamed into place, so a
reader (or a rerun after a kill) never mistakes a partial file for a complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import polars as pl

from flows.config import PublishConfig
from flows.records import Dialogue, Reject, Seed

REJECT_SCHEMA = {
    "stage": pl.String,
    "reason": pl.String,
    "source": pl.String,
    "location": pl.String,
    "seed_id": pl.String,
    "detail": pl.String,
    "checks": pl.String,
}


class OutputLockedError(Exception):
    """Another run is writing this output folder: refuse at once, one line, nothing touched."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder for a whole run.

    Two runs on one cache are fine (the cache is safe for concurrent writers), but two runs
    writing one output folder would interleave their files; the second refuses instead. The
    lock is an flock, so a killed run never leaves a stale lock behind."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".master.lock"
    fh = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise OutputLockedError(
                f"{out}: another run is writing this output folder ({holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        yield
    finally:
        fh.close()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside target; rename it onto target only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are meant to be shared
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


def _save_to_disk(dataset: datasets.Dataset, target: Path) -> None:
    """save_to_disk into a fresh folder, then swap it in: a reader never sees half a folder."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    dataset.save_to_disk(str(staging / "data"))
    old = None
    if target.exists():
        old = staging / "old"
        os.replace(target, old)
    os.replace(staging / "data", target)
    shutil.rmtree(staging)


def llama_factory_entry(name: str) -> dict[str, Any]:
    """A LLaMA-Factory dataset_info.json entry for dataset.jsonl (ShareGPT layout)."""
    return {
        name: {
            "file_name": "dataset.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    }


def _empty_dataset() -> datasets.Dataset:
    """No row survived: still a loadable dataset with the columns a trainer reads."""
    turn = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in ("seed_id", "source", "domain", "scenario")},
            "conversations": datasets.List(turn),
            "messages": datasets.List(message),
            **{k: datasets.Value("string") for k in ("provenance", "question", "reference")},
        }
    )
    return datasets.Dataset.from_dict({k: [] for k in features}, features=features)


def write_dataset(out: Path, rows: list[dict[str, Any]], publish: PublishConfig) -> None:
    """dataset.parquet (all columns), dataset.jsonl (ShareGPT), messages.jsonl (OpenAI), the
    `datasets` folder hf/ and LLaMA-Factory's dataset_info.json."""
    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_list(rows) if rows else _empty_dataset()
    with atomic_path(out / "dataset.parquet") as tmp:
        dataset.to_parquet(str(tmp))
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
    if publish.save_to_disk and rows:
        _save_to_disk(dataset, out / "hf")
    elif (out / "hf").exists():
        # `datasets` cannot load a 0-row folder back; no folder beats a stale or broken one
        shutil.rmtree(out / "hf")
    write_json(out / "dataset_info.json", llama_factory_entry(publish.name))


class PublishError(Exception):
    """The Hub upload failed; the local outputs are complete. One line for the user."""


def push_to_hub(out: Path, publish: PublishConfig) -> str | None:
    """Upload dataset.parquet and the card to publish.push_to_hub, if configured."""
    if not publish.push_to_hub:
        return None
    token = os.environ.get(publish.token_env)
    if not token:
        raise PublishError(
            f"publish.push_to_hub: environment variable {publish.token_env} is not set "
            "(it must hold a Hugging Face write token)"
        )
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PublishError(
            f"publish.push_to_hub {publish.push_to_hub}: the Hub is offline "
            "(HF_HUB_OFFLINE=1); set HF_HUB_OFFLINE=0 to upload; local outputs are complete"
        )
    try:
        dataset = datasets.Dataset.from_parquet(str(out / "dataset.parquet"))
        dataset.push_to_hub(publish.push_to_hub, token=token, private=publish.private)
        from huggingface_hub import HfApi

        HfApi(token=token).upload_file(
            path_or_fileobj=str(out / "README.md"),
            path_in_repo="README.md",
            repo_id=publish.push_to_hub,
            repo_type="dataset",
        )
    except Exception as exc:  # noqa: BLE001 - wrapped at the boundary, one line
        text = " ".join(str(exc).replace(token, "***").split())[:300]
        raise PublishError(f"publish.push_to_hub {publish.push_to_hub}: {text}") from None
    return publish.push_to_hub


def write_seeds(out: Path, seeds: list[Seed]) -> None:
    rows = [{**s.model_dump(), "meta": json.dumps(s.meta, sort_keys=True)} for s in seeds]
    schema = {k: pl.String for k in ("id", "source", "domain", "question", "reference", "meta")}
    with atomic_path(out / "seeds.parquet") as tmp:
        pl.DataFrame(rows, schema=schema).write_parquet(tmp)


def write_rejects(out: Path, rejects: list[Reject]) -> None:
    frame = pl.DataFrame([r.model_dump() for r in rejects], schema=REJECT_SCHEMA)
    with atomic_path(out / "rejects.parquet") as tmp:
        frame.write_parquet(tmp)
