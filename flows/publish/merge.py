"""Merge: accepted dialogues (and, in `mix` mode, original seeds) into the published rows.

`replace` is the paper's BOOST-QA: each accepted dialogue stands in for its seed, one per seed.
`mix` adds original question/answer pairs at a configured ratio, for trainers who want both.
The order is a hash of each row's identity, so it is deterministic, independent of how
shards finished, and mixes scenarios and sources instead of grouping them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from flows.core.config import MergeConfig
from flows.core.records import Seed
from flows.publish.spill import RowRef, read_rows


def _order_key(row: dict[str, Any]) -> str:
    return hashlib.sha256(f"{row['seed_id']}\x1f{row['scenario']}".encode()).hexdigest()


def _content_digest(row: dict[str, Any]) -> str:
    canon = json.dumps(row["conversations"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def original_row(seed: Seed) -> dict[str, Any]:
    """A seed as a two-turn conversation, with the same columns as a dialogue row."""
    conversations = [
        {"from": "human", "value": seed.question},
        {"from": "gpt", "value": seed.reference},
    ]
    return {
        "seed_id": seed.id,
        "source": seed.source,
        "domain": seed.domain,
        "scenario": "original",
        "turns": [
            {
                "speaker": "question",
                "role": None,
                "text": seed.question,
                "model": None,
                "temperature": None,
                "finish_reason": None,
            },
            {
                "speaker": "strong_student",
                "role": None,
                "text": seed.reference,
                "model": None,
                "temperature": None,
                "finish_reason": None,
            },
        ],  # fmt: skip
        "conversations": conversations,
        "messages": [
            {"role": "user", "content": seed.question},
            {"role": "assistant", "content": seed.reference},
        ],
        "provenance": json.dumps({"original": True}),
        "quality": None,
        "question": seed.question,
        "reference": seed.reference,
    }


def row_ref(row: dict[str, Any], where: Any) -> RowRef:
    """What merging needs of a row, with where its content is (see flows/publish/spill.py)."""
    return RowRef(_order_key(row), row["seed_id"], _content_digest(row), where)


def _unique(refs: Sequence[RowRef], seen: set[str]) -> list[RowRef]:
    kept = []
    for ref in refs:
        if ref.digest not in seen:
            seen.add(ref.digest)
            kept.append(ref)
    return kept


def merge_refs(
    dialogue_refs: Sequence[RowRef], seeds: Sequence[Seed], cfg: MergeConfig
) -> tuple[list[RowRef], int]:
    """The published rows (as refs, in published order) and how many exact duplicates were
    dropped.

    One dialogue per seed (the first in the deterministic order, should a seed ever have
    two); `mix` then adds originals in proportion to the dialogues that remain."""
    seen_seeds: set[str] = set()
    one_each = []
    for ref in sorted(dialogue_refs, key=lambda r: r.order):
        if ref.seed_id not in seen_seeds:
            seen_seeds.add(ref.seed_id)
            one_each.append(ref)
    seen: set[str] = set()
    refs = _unique(one_each, seen)
    dropped = len(one_each) - len(refs)
    if cfg.mode == "mix":
        wanted = min(len(seeds), round(cfg.originals_per_dialogue * len(refs)))
        picked = sorted(seeds, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())[:wanted]
        originals = [row_ref(original_row(s), s) for s in picked]
        extra = _unique(originals, seen)
        dropped += len(originals) - len(extra)
        refs = sorted([*refs, *extra], key=lambda r: r.order)
    return refs, dropped


def merge_rows(
    dialogue_rows: Sequence[dict[str, Any]], seeds: Sequence[Seed], cfg: MergeConfig
) -> tuple[list[dict[str, Any]], int]:
    """merge_refs over rows held in memory."""
    refs, dropped = merge_refs([row_ref(r, r) for r in dialogue_rows], seeds, cfg)
    return list(PublishedRows(refs)), dropped


class PublishedRows:
    """The published rows, read in order each time they are iterated: spilled rows from
    their files, originals made from their seed, rows held in memory as they are."""

    def __init__(self, refs: Sequence[RowRef]) -> None:
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spilled = read_rows(r.where for r in self.refs if isinstance(r.where, tuple))
        for ref in self.refs:
            if isinstance(ref.where, tuple):
                yield next(spilled)
            elif isinstance(ref.where, Seed):
                yield original_row(ref.where)
            else:
                yield ref.where
