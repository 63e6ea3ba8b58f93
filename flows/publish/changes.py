"""What changed between two versions of a dataset, row by row.

A row is known by its seed and whether it is a dialogue or the seed's original QA
(`scenario: original`): the same seed with a new conversation is `regenerated`, whatever its
scenario now. Counts are per scenario of the row (the newer row's, the older one's for a
removed row). Used by publish (summary.json `changes`, report.md, the card) and by
`master diff`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows.publish.gates import accepted_share
from flows.publish.report import markdown_table

KINDS = ("added", "removed", "regenerated", "unchanged")
EXAMPLES = 20  # seed ids per kind kept in summary.json; `master diff` lists them all

Rows = dict[tuple[str, bool], tuple[str, bytes]]  # (seed_id, original) -> (scenario, digest)


def _digests(conversations: Any) -> list[bytes]:
    """A digest of each row's conversation (speaker and text of every turn), computed on the
    Arrow column: joining in Arrow and hashing bytes is many times faster than building the
    rows as Python objects (benchmarks/RESULTS.md, versions)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    turns = conversations.flatten()
    said = pc.binary_join_element_wise(
        pc.fill_null(turns.field("from"), ""), pc.fill_null(turns.field("value"), ""), "\x1e"
    )
    offsets = pc.subtract(conversations.offsets, conversations.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, said), "\x1f")
    return [
        hashlib.blake2b(b or b"", digest_size=16).digest()
        for b in pc.fill_null(joined, "").cast(pa.binary()).to_pylist()
    ]


def read_rows(parquet: Path | None) -> Rows:
    """A dataset.parquet's rows by key, with a digest of each conversation ({} for None)."""
    if parquet is None or not parquet.exists():
        return {}
    import pyarrow.parquet as pq

    rows: Rows = {}
    # batch by batch: a whole-table read would import pandas, which a replay never loads
    for batch in pq.ParquetFile(parquet).iter_batches(
        columns=["seed_id", "scenario", "conversations"]
    ):
        for seed_id, scenario, digest in zip(
            batch.column("seed_id").to_pylist(),
            batch.column("scenario").to_pylist(),
            _digests(batch.column("conversations")),
            strict=True,
        ):
            rows[(seed_id, scenario == "original")] = (scenario, digest)
    return rows


def diff_files(before: Path | None, after: Path) -> dict[str, list[tuple[str, str]]]:
    """`diff_rows` of two dataset.parquet files; two files of the same bytes (a replayed run
    publishes the rows it published before) are all unchanged without reading a row."""
    from flows.publish.versions import content_digest

    if (
        before is not None
        and before.exists()
        and (content_digest(before.parent) == content_digest(after.parent))
    ):
        import pyarrow.parquet as pq

        keys = [
            (seed_id, scenario)
            for batch in pq.ParquetFile(after).iter_batches(columns=["seed_id", "scenario"])
            for seed_id, scenario in zip(
                batch.column("seed_id").to_pylist(), batch.column("scenario").to_pylist(),
                strict=True,
            )
        ]  # fmt: skip
        return {"added": [], "removed": [], "regenerated": [], "unchanged": sorted(keys)}
    return diff_rows(read_rows(before), read_rows(after))


def diff_rows(before: Rows, after: Rows) -> dict[str, list[tuple[str, str]]]:
    """Each kind's (seed_id, scenario) pairs, sorted by seed id."""
    kinds: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
    for key, (scenario, digest) in after.items():
        old = before.get(key)
        kind = "added" if old is None else "unchanged" if old[1] == digest else "regenerated"
        kinds[kind].append((key[0], scenario))
    kinds["removed"] = [(key[0], old[0]) for key, old in before.items() if key not in after]
    return {k: sorted(v) for k, v in kinds.items()}


def changes_block(
    since: str | None,
    kinds: Mapping[str, list[tuple[str, str]]],
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
) -> dict[str, Any]:
    """summary.json's `changes`: counts, counts per scenario, example seed ids, and the
    accepted share before and after (before is None for a first version)."""
    by_scenario: dict[str, dict[str, int]] = {}
    for kind, pairs in kinds.items():
        for scenario, n in Counter(s for _, s in pairs).items():
            by_scenario.setdefault(scenario, dict.fromkeys(KINDS, 0))[kind] = n
    share_before = accepted_share(before) if before else None
    share_after = accepted_share(after)
    return {
        "since": since,
        **{f"rows_{k}": len(kinds[k]) for k in KINDS},
        "by_scenario": dict(sorted(by_scenario.items())),
        "accepted_share": {
            "before": None if share_before is None else round(share_before, 4),
            "after": None if share_after is None else round(share_after, 4),
        },
        "seed_ids": {k: [s for s, _ in kinds[k][:EXAMPLES]] for k in KINDS if k != "unchanged"},
    }


def unchanged_block(
    since: str,
    by_scenario: Mapping[str, int],
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
) -> dict[str, Any]:
    """`changes_block` for a version whose dataset.parquet has the previous one's bytes:
    every row unchanged, counted from summary.json's rows.by_scenario."""
    block = changes_block(since, dict.fromkeys(KINDS, []), before, after)
    block["rows_unchanged"] = sum(by_scenario.values())
    block["by_scenario"] = {
        s: {**dict.fromkeys(KINDS, 0), "unchanged": n} for s, n in sorted(by_scenario.items())
    }
    return block


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def changes_markdown(changes: Mapping[str, Any]) -> str:
    """The "Changes since VERSION" section of report.md and the card."""
    since = changes.get("since")
    head = f"## Changes since {since}" if since else "## Changes"
    if not since:
        return f"{head}\n\nThe first version in this folder: {changes['rows_added']} rows."
    rows = [
        [scenario, *(counts[k] for k in KINDS)]
        for scenario, counts in changes["by_scenario"].items()
    ]
    rows.append(["**all**", *(changes[f"rows_{k}"] for k in KINDS)])
    share = changes["accepted_share"]
    return (
        f"{head}\n\n"
        + markdown_table(["scenario", *KINDS], rows)
        + f"\n\nAccepted share: {_share(share['before'])} before, {_share(share['after'])} now. "
        "A row is regenerated when its seed is the same and its conversation is not."
    )


_SECTION = re.compile(r"^## Changes\b.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
_VERSION = re.compile(r"Version `[^`]*`\. ")


def restamp_card(card: str, summary: Mapping[str, Any]) -> str:
    """A rendered card with its version and changes section rewritten for `summary`: a
    replayed run's card is the stored one, which names another version and its changes."""
    card = _VERSION.sub(lambda _: f"Version `{summary['version']}`. ", card, count=1)
    section = changes_markdown(summary["changes"]) + "\n\n"
    if _SECTION.search(card):
        return _SECTION.sub(lambda _: section, card, count=1)
    return card.replace("\n## Quality checks", f"\n{section}## Quality checks", 1)
