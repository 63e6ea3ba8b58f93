"""Changes between two versions: added, removed, regenerated and unchanged rows by seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.publish.changes import changes_block, changes_markdown, diff_rows, read_rows


def write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    table = pa.Table.from_pylist(
        [
            {
                "seed_id": s,
                "scenario": sc,
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": text}],
            }
            for s, sc, text in rows
        ]  # fmt: skip
    )
    pq.write_table(table, path)
    return path


def quality(accepted: int, rejected: int) -> dict[str, Any]:
    return {"quality": {"accepted": accepted, "rejected": rejected}}


def test_each_row_is_added_removed_regenerated_or_unchanged_by_its_seed(tmp_path: Path) -> None:
    before = read_rows(write(tmp_path / "a.parquet", [
        ("s1", "debate", "same"), ("s2", "analogy", "old"), ("s3", "debate", "gone"),
        ("s4", "original", "qa"),
    ]))  # fmt: skip
    after = read_rows(write(tmp_path / "b.parquet", [
        ("s1", "debate", "same"), ("s2", "error_correction", "new"), ("s4", "original", "qa"),
        ("s4", "debate", "a dialogue now"), ("s5", "analogy", "fresh"),
    ]))  # fmt: skip
    kinds = diff_rows(before, after)
    assert kinds == {
        "added": [("s4", "debate"), ("s5", "analogy")],
        "removed": [("s3", "debate")],
        "regenerated": [("s2", "error_correction")],
        "unchanged": [("s1", "debate"), ("s4", "original")],
    }
    block = changes_block("V1", kinds, quality(8, 2), quality(9, 1))
    assert (block["rows_added"], block["rows_removed"], block["rows_regenerated"],
            block["rows_unchanged"]) == (2, 1, 1, 2)  # fmt: skip
    assert block["by_scenario"]["debate"] == {
        "added": 1, "removed": 1, "regenerated": 0, "unchanged": 1
    }  # fmt: skip
    assert block["accepted_share"] == {"before": 0.8, "after": 0.9}
    assert block["seed_ids"]["added"] == ["s4", "s5"]
    text = changes_markdown(block)
    assert text.startswith("## Changes since V1") and "| **all** | 2 | 1 | 1 | 2 |" in text


def test_a_first_version_adds_every_row(tmp_path: Path) -> None:
    after = read_rows(write(tmp_path / "b.parquet", [("s1", "debate", "x")]))
    block = changes_block(None, diff_rows(read_rows(None), after), None, quality(1, 0))
    assert block["rows_added"] == 1 and block["accepted_share"]["before"] is None
    assert changes_markdown(block) == "## Changes\n\nThe first version in this folder: 1 rows."


def test_a_replayed_card_names_its_own_version_and_changes() -> None:
    from flows.publish.changes import restamp_card

    stored = (
        "# data\n\n## Provenance\n\nVersion `V1`. Generated today.\n\n"
        "## Changes\n\nThe first version in this folder: 1 rows.\n\n## Quality checks\n\nx\n"
    )
    kinds = {"added": [], "removed": [], "regenerated": [], "unchanged": [("s1", "debate")]}
    summary = {"version": "V2", "changes": changes_block("V1", kinds, quality(1, 0),
                                                         quality(1, 0))}  # fmt: skip
    card = restamp_card(stored, summary)
    assert "Version `V2`. Generated today." in card and "`V1`" not in card
    assert "## Changes since V1\n\n| scenario |" in card and "first version" not in card
    assert card.endswith("## Quality checks\n\nx\n")
