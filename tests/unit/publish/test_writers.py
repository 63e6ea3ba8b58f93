"""dataset.parquet's schema is written without importing `datasets` (start-up time) and must
be the very schema, metadata included, that `datasets` itself would write."""

from __future__ import annotations

import datasets
import pyarrow as pa

from flows.publish.writers import dataset_schema

ROWS = [
    {
        "seed_id": "a",
        "turns": [{"speaker": "teacher", "text": "hi", "temperature": 0.7, "tokens": 3}],
        "conversations": [{"from": "human", "value": "q"}],
        "quality": {"turn_flags": [], "judge": {"score": 4, "ok": True}, "none": None},
        "bytes": b"x",
        "small": pa.scalar(1, pa.int8()).as_py(),
    },
    {"seed_id": "b", "quality": {"turn_flags": ["short"], "extra": 1.5}, "tags": ["x"]},
]


def test_schema_and_metadata_equal_what_datasets_writes() -> None:
    ours = dataset_schema(ROWS, batch=1)
    assert ours is not None
    raw = pa.unify_schemas(
        [pa.Table.from_pylist([r]).schema for r in ROWS], promote_options="permissive"
    )
    theirs = datasets.Features.from_arrow_schema(raw).arrow_schema
    assert ours.equals(theirs, check_metadata=True)
    assert ours.metadata == theirs.metadata


def test_a_type_outside_the_table_is_converted_by_datasets() -> None:
    rows = [{"when": __import__("datetime").datetime(2024, 1, 1)}]
    ours = dataset_schema(rows)
    theirs = datasets.Features.from_arrow_schema(pa.Table.from_pylist(rows).schema).arrow_schema
    assert ours is not None and ours.equals(theirs, check_metadata=True)


def test_no_rows_no_schema() -> None:
    assert dataset_schema([]) is None
