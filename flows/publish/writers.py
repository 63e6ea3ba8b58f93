"""Writing run outputs (DESIGN.md section 4), each file atomically.

Every file is written under a temporary name in the same folder and renamed into place, so a
reader (or a rerun after a kill) never mistakes a partial file for a complete one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from flows.core.config import PublishConfig
from flows.core.files import atomic_path
from flows.core.records import Reject, Seed
from flows.publish.card import CARD_FILE, card_files
from flows.publish.trainers.export import trainer_files, weighed_messages

if TYPE_CHECKING:
    import datasets


def _datasets() -> Any:
    """`datasets`, progress bars off. Imported where the hf/ folder, an empty dataset or a Hub
    upload needs it: a run with save_to_disk off and a replay never load it (start-up time,
    benchmarks/RESULTS.md)."""
    import datasets

    datasets.disable_progress_bars()
    return datasets


BATCH = 1000  # rows per Arrow batch when writing the dataset

REJECT_SCHEMA = {
    "stage": pl.String,
    "reason": pl.String,
    "source": pl.String,
    "location": pl.String,
    "seed_id": pl.String,
    "detail": pl.String,
    "checks": pl.String,
}


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


def _empty_dataset(weighed: bool) -> datasets.Dataset:
    """No row survived: still a loadable dataset with the columns a trainer reads."""
    datasets = _datasets()
    turn = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    if weighed:
        message["weight"] = datasets.Value("int64")
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in ("seed_id", "source", "domain", "scenario")},
            "conversations": datasets.List(turn),
            "messages": datasets.List(message),
            **{
                k: datasets.Value("string")
                for k in ("provenance", "question", "reference", "similar_seed_id")
            },
        }
    )
    return datasets.Dataset.from_dict({k: [] for k in features}, features=features)


def dataset_schema(rows: Iterable[dict[str, Any]], batch: int = BATCH) -> pa.Schema | None:
    """The Arrow schema of all rows, as `datasets` would infer it from the whole list (the
    `quality` struct holds every check any row has), inferred a batch at a time."""
    schemas: list[pa.Schema] = []
    for chunk in _batches(rows, batch):
        schema = pa.Table.from_pylist(chunk).schema
        if not any(schema.equals(s) for s in schemas):
            schemas.append(schema)
    if not schemas:
        return None
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    try:
        features = {field.name: _feature(field.type) for field in unified}
    except KeyError:  # a type our rows do not have: datasets converts it
        return _datasets().Features.from_arrow_schema(unified).arrow_schema
    return unified.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


#: datasets' dtype name of each plain Arrow type.
_DTYPES = {
    pa.null(): "null",
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.uint8(): "uint8",
    pa.uint16(): "uint16",
    pa.uint32(): "uint32",
    pa.uint64(): "uint64",
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.binary(): "binary",
    pa.large_binary(): "large_binary",
}


def _feature(arrow_type: pa.DataType) -> Any:
    """The `datasets` feature of an Arrow type, as Features.to_dict() writes it into a parquet
    file's `huggingface` metadata (pinned against datasets by tests/unit/publish/
    test_writers.py); KeyError for a type outside structs, lists and _DTYPES."""
    if pa.types.is_struct(arrow_type):
        return {field.name: _feature(field.type) for field in arrow_type}
    if pa.types.is_list(arrow_type):
        return {"feature": _feature(arrow_type.value_type), "_type": "List"}
    if pa.types.is_large_list(arrow_type):
        return {"feature": _feature(arrow_type.value_type), "_type": "LargeList"}
    return {"dtype": _DTYPES[arrow_type], "_type": "Value"}


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class _Weighed:
    """Rows whose assistant messages carry their training weights, re-iterable as the rows
    are (write_dataset reads them twice)."""

    def __init__(self, rows: Iterable[dict[str, Any]], mapping: str) -> None:
        self.rows, self.mapping = rows, mapping

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            yield {**row, "messages": weighed_messages(row, self.mapping)}


def write_dataset(
    out: Path,
    rows: Iterable[dict[str, Any]],
    publish: PublishConfig,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    mapping: str = "alternate",
) -> dict[str, Any]:
    """dataset.parquet (all columns), dataset.jsonl (ShareGPT), messages.jsonl (OpenAI chat:
    `messages` only, the one key that format takes), the `datasets` folder hf/ and the
    trainers' files (flows/publish/trainers/export.py); returns summary.json's `training`.
    With publish.flawed_turns `mask`, each assistant message of dataset.parquet, hf/ and
    messages.jsonl has a `weight` (`mapping` is the debate_mapping the turns were laid out
    with).

    `rows` is iterated twice (the schema first, then the files, a batch at a time), so a
    100,000-row dataset is never in memory: pass a list or a re-iterable view such as
    flows.publish.merge.PublishedRows. `on_row` sees each row as it is written."""
    masking = publish.flawed_turns == "mask"
    if masking:
        rows = _Weighed(rows, mapping)
    schema = dataset_schema(rows)
    hf = publish.save_to_disk and schema is not None
    with (
        atomic_path(out / "dataset.parquet") as parquet,
        atomic_path(out / "dataset.jsonl") as sharegpt,
        atomic_path(out / "messages.jsonl") as messages,
        sharegpt.open("w", encoding="utf-8") as sharegpt_fh,
        messages.open("w", encoding="utf-8") as messages_fh,
        trainer_files(out, publish, mapping) as trainers,
        tempfile.TemporaryDirectory(prefix=".hf-", dir=out) as staging,
    ):
        if schema is None:
            _empty_dataset(masking).to_parquet(str(parquet))
        else:
            # hf/ from an Arrow stream written beside the parquet file: memory-mapped, so
            # save_to_disk never holds the dataset either
            arrow = pa.ipc.new_stream(f"{staging}/data.arrow", schema) if hf else None
            with pq.ParquetWriter(parquet, schema) as writer:
                for chunk in _batches(rows, BATCH):
                    table = pa.Table.from_pylist(chunk, schema=schema)
                    writer.write_table(table)
                    if arrow is not None:
                        arrow.write_table(table)
                    for r in chunk:
                        sharegpt_fh.write(json.dumps(
                            {"conversations": r["conversations"], "seed_id": r["seed_id"],
                             "scenario": r["scenario"], "source": r["source"]},
                            ensure_ascii=False) + "\n")  # fmt: skip
                        messages_fh.write(
                            json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n"
                        )
                        trainers.add(r)
                        if on_row is not None:
                            on_row(r)
            if arrow is not None:
                arrow.close()
                with parquet.open("rb") as fh:  # same rows, same fingerprint, in any folder
                    fingerprint = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
                datasets = _datasets()
                from datasets.arrow_reader import ArrowReader

                table = ArrowReader.read_table(f"{staging}/data.arrow", in_memory=False)
                _save_to_disk(datasets.Dataset(table, fingerprint=fingerprint), out / "hf")
                del table
    if not hf and (out / "hf").exists():
        # `datasets` cannot load a 0-row folder back; no folder beats a stale or broken one
        shutil.rmtree(out / "hf")
    return trainers.finish()


class PublishError(Exception):
    """The Hub upload failed; the local outputs are complete. One line for the user."""


def hub_files(out: Path) -> list[str]:
    """What a Hub upload sends from `out`: the card and exactly the files it names (its
    `configs`' data files and the images it shows), paths relative to `out`."""
    return [CARD_FILE, *card_files((out / CARD_FILE).read_text(encoding="utf-8"))]


def hub_client(token: str) -> Any:
    """huggingface_hub's HfApi, imported when a push needs it (start-up time)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def push_to_hub(out: Path, publish: PublishConfig, version: str | None = None) -> str | None:
    """Upload the card and the files it names to the dataset repo publish.push_to_hub, in one
    commit, so `datasets.load_dataset(repo)` reads the rows the card describes. With a
    `version`, the commit message names it and the commit is tagged with it, so
    `load_dataset(repo, revision=version)` reads that version."""
    if not publish.push_to_hub:
        return None
    repo = publish.push_to_hub
    token = os.environ.get(publish.token_env)
    if not token:
        raise PublishError(
            f"publish.push_to_hub: environment variable {publish.token_env} is not set "
            "(it must hold a Hugging Face write token)"
        )
    import huggingface_hub as hf_hub  # only a push needs it (start-up time)

    if hf_hub.constants.is_offline_mode():
        raise PublishError(
            f"publish.push_to_hub {repo}: HF_HUB_OFFLINE is set in this environment, so "
            "nothing was uploaded; unset it to upload; local outputs are complete"
        )
    files = hub_files(out)
    missing = [f for f in files if not (out / f).is_file()]
    if missing:
        raise PublishError(f"publish.push_to_hub {repo}: the card names missing files {missing}")
    if any(f.endswith(".parquet") and pq.read_metadata(out / f).num_rows == 0 for f in files):
        # `datasets` refuses a split with no rows: the repo would not load
        raise PublishError(f"publish.push_to_hub {repo}: no rows to publish, nothing uploaded")
    try:
        api = hub_client(token)
        api.create_repo(repo, repo_type="dataset", private=publish.private, exist_ok=True)
        named = f" version {version}" if version else ""
        commit = api.create_commit(
            repo,
            repo_type="dataset",
            operations=[
                hf_hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(out / name))
                for name in files
            ],
            commit_message=f"MASTER: {publish.name}{named} ({', '.join(files)})",
        )
        if version:
            api.create_tag(
                repo,
                tag=version,
                revision=commit.oid,
                repo_type="dataset",
                tag_message=f"MASTER: {publish.name}{named}",
            )
    except Exception as exc:  # noqa: BLE001 - wrapped at the boundary, one line
        text = " ".join(str(exc).replace(token, "***").split())[:300]
        raise PublishError(
            f"publish.push_to_hub {repo}: {type(exc).__name__}: {text}; local outputs are complete"
        ) from None
    return repo


def write_seeds(out: Path, seeds: list[Seed]) -> None:
    rows = [{**s.model_dump(), "meta": json.dumps(s.meta, sort_keys=True)} for s in seeds]
    schema = {k: pl.String for k in ("id", "source", "domain", "question", "reference", "meta")}
    with atomic_path(out / "seeds.parquet") as tmp:
        pl.DataFrame(rows, schema=schema).write_parquet(tmp)


def write_rejects(out: Path, rejects: list[Reject]) -> None:
    frame = pl.DataFrame([r.model_dump() for r in rejects], schema=REJECT_SCHEMA)
    with atomic_path(out / "rejects.parquet") as tmp:
        frame.write_parquet(tmp)
